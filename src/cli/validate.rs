//! `qlab validate`: every config error at once, then the files the sweep needs and how to get them.

use std::process::ExitCode;

use color_eyre::eyre::Result;
use qlab::plan::Plan;

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
