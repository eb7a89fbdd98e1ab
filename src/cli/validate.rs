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
    let found = qlab::preflight::check(&config);
    for w in &found.warnings {
        eprintln!("{w}");
    }
    for e in &found.errors {
        eprintln!("{e}");
    }
    if !missing.is_empty() || !found.errors.is_empty() {
        eprintln!(
            "{}: {} missing file(s), {} error(s)",
            path.display(),
            missing.len(),
            found.errors.len()
        );
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

/// The checks `qlab validate` makes beyond the config's text, for a command about to work on the sweep:
/// warnings are printed, errors refuse the command (exit 2) before any work starts.
pub fn preflight(config: &Config) -> Result<()> {
    let found = qlab::preflight::check(config);
    for w in &found.warnings {
        eprintln!("{w}");
    }
    if found.errors.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
    Err(super::bad_input(format!(
        "{}\n{}: {} error(s)",
        lines.join("\n"),
        config.path.display(),
        lines.len()
    )))
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
