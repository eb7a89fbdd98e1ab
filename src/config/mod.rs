//! experiments.toml: the typed schema, loading with source spans, validation and matrix expansion.

mod checks;
pub mod cluster;
pub mod diagnostic;
mod files;
mod parse;
pub mod schema;
pub mod template;
mod validate;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use checks::{MAX_SEQ_LEN, check_devices, check_id, eval as check_eval, format_from_extension};
pub use cluster::{BackendKind, ClusterSection};
pub use diagnostic::{ConfigErrors, Diagnostic};
pub use parse::Override;
pub use schema::*;

use parse::SpanIndex;

/// A loaded, structurally valid experiments.toml.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub sweep: SweepSection,
    pub models: Vec<ModelSection>,
    pub datasets: Vec<DatasetSection>,
    pub rubric: RubricSection,
    pub matrix: MatrixSection,
    pub overrides: Vec<Override>,
    /// Non-fatal remarks (an eval prompt that differs from the training prompt, say).
    pub warnings: Vec<Diagnostic>,
    lora: toml::Table,
    train: toml::Table,
    eval: toml::Table,
    /// `[cluster]` as written; [`Config::cell_cluster`] applies the overrides.
    cluster: toml::Table,
    spans: SpanIndex,
    source: String,
}

/// The settings of one matrix cell after `[[override]]` blocks are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct CellSettings {
    pub lora: LoraSection,
    pub train: TrainSection,
    pub eval: EvalSection,
}

impl Config {
    /// Read and validate `path`; every problem of the file is reported at once.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let source = crate::store::bounded::read_to_string(
            path,
            crate::store::bounded::TEXT_FILE_LIMIT,
            "config",
        )
        .map_err(|e| ConfigErrors(vec![Diagnostic::at(path, "", None, read_error(e))]))?;
        Config::from_source(path, source)
    }

    /// Validate `source` as if read from `path` (relative paths in it are relative to `path`'s directory).
    pub fn from_source(path: &Path, source: String) -> Result<Config, ConfigErrors> {
        let parsed = parse::parse(path, &source).map_err(ConfigErrors)?;
        let mut sweep = parsed.sweep;
        if sweep.name.is_empty() {
            sweep.name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("sweep")
                .to_owned();
        }
        let config = Config {
            path: path.to_owned(),
            sweep,
            models: parsed.models,
            datasets: parsed.datasets,
            rubric: parsed.rubric,
            matrix: parsed.matrix,
            overrides: parsed.overrides,
            warnings: Vec::new(),
            lora: parsed.lora,
            train: parsed.train,
            eval: parsed.eval,
            cluster: parsed.cluster,
            spans: parsed.spans,
            source,
        };
        validate::validate(config)
    }

    /// The directory relative paths in the config are resolved against.
    pub fn base_dir(&self) -> &Path {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }

    /// A path from the config, resolved against the config's directory.
    pub fn resolve_path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base_dir().join(p)
        }
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.resolve_path(&self.sweep.runs_dir)
    }

    pub fn model(&self, id: &str) -> Option<&ModelSection> {
        self.models.iter().find(|m| m.id == id)
    }

    pub fn dataset(&self, id: &str) -> Option<&DatasetSection> {
        self.datasets.iter().find(|d| d.id == id)
    }

    /// The matrix cells in order: models outer, datasets inner.
    pub fn cells(&self) -> Vec<(&ModelSection, &DatasetSection)> {
        let mut out = Vec::new();
        for m in self.matrix.models.iter().filter_map(|id| self.model(id)) {
            for d in self
                .matrix
                .datasets
                .iter()
                .filter_map(|id| self.dataset(id))
            {
                out.push((m, d));
            }
        }
        out
    }

    /// Settings of the cell (model, dataset): the base sections patched by every matching override, in order.
    pub fn cell_settings(&self, model: &str, dataset: &str) -> CellSettings {
        let (lora, train, eval) = self.cell_tables(model, dataset);
        CellSettings {
            lora: from_table(lora),
            train: from_table(train),
            eval: from_table(eval),
        }
    }

    fn cell_tables(&self, model: &str, dataset: &str) -> (toml::Table, toml::Table, toml::Table) {
        let (mut lora, mut train, mut eval) =
            (self.lora.clone(), self.train.clone(), self.eval.clone());
        for (_, o) in self.matching_overrides(model, dataset) {
            lora.extend(o.lora.clone());
            train.extend(o.train.clone());
            eval.extend(o.eval.clone());
        }
        (lora, train, eval)
    }

    /// The overrides that apply to the cell, with their index in the file.
    fn matching_overrides<'a>(
        &'a self,
        model: &'a str,
        dataset: &'a str,
    ) -> impl Iterator<Item = (usize, &'a Override)> {
        self.overrides.iter().enumerate().filter(move |(_, o)| {
            o.model.as_deref().is_none_or(|m| m == model)
                && o.dataset.as_deref().is_none_or(|d| d == dataset)
        })
    }

    /// A diagnostic at the value of dotted `key` (`model.0.path`), or at the file when it has no place.
    /// `<top>` is the start of the file.
    pub fn diagnostic(&self, key: &str, message: impl Into<String>) -> Diagnostic {
        let span = if key == "<top>" {
            Some(0..0)
        } else {
            self.spans.get(key)
        };
        Diagnostic::at(&self.path, &self.source, span, message)
    }

    /// Files the config names that are not there, each with how to get it.
    pub fn missing_files(&self) -> Vec<Diagnostic> {
        files::missing(self)
    }
}

/// A read error as a config diagnostic's message (which names the file itself).
fn read_error(e: crate::store::StoreError) -> String {
    match e {
        crate::store::StoreError::Io { source, .. } => format!("cannot read config: {source}"),
        crate::store::StoreError::Line { line, message, .. } => format!("line {line}: {message}"),
        crate::store::StoreError::TooLarge { limit, what, .. } => {
            format!(
                "larger than {} MiB: not a {what} (a device file?)",
                limit >> 20
            )
        }
        other => other.to_string(),
    }
}

/// Sections were checked against their schema when parsed, and patches only replace keys with values that
/// passed the same check, so a merged table always deserializes; a default stands in should that ever fail.
fn from_table<T: for<'de> Deserialize<'de> + Default>(t: toml::Table) -> T {
    T::deserialize(toml::Value::Table(t)).unwrap_or_default()
}

#[cfg(test)]
mod tests;
