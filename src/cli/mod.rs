//! Command-line interface: one clap command per file; each parses its arguments and calls the library.

mod demo_data;
mod import_questions;
mod logging;
mod plan;
mod status;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;

/// qlab: run QLoRA fine-tuning experiments end to end.
///
/// With no command, opens the dashboard on ./experiments.toml.
#[derive(Debug, Parser)]
#[command(name = "qlab", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a config: every error at once as PATH:LINE:COL, then the files it needs (exit 2 on errors).
    Validate(validate::Args),
    /// Show the runs a config asks for, with their stable ids and stages.
    Plan(plan::Args),
    /// Show each run's state, progress, last loss, ETA and live runner.
    Status(status::Args),
    /// Convert one of the study's question lists (text) into qlab's question-set TOML.
    ImportQuestions(import_questions::Args),
    /// Regenerate the demo sweep's arithmetic word problems (data/arith.jsonl).
    DemoData(demo_data::Args),
    /// Benchmarks (training step speed and memory).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// The config path argument every sweep command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// Path of the experiments file.
    #[arg(default_value = "experiments.toml")]
    pub config: PathBuf,
}

/// Exit status for input the user must fix (a bad config, a malformed file).
pub const EXIT_BAD_INPUT: u8 = 2;

pub fn main() -> ExitCode {
    if let Err(e) = color_eyre::install() {
        eprintln!("qlab: {e}");
    }
    let cli = Cli::parse();
    let _log = logging::init();
    let result = match cli.command {
        None => validate::run(validate::Args {
            config: ConfigArg {
                config: "experiments.toml".into(),
            },
        }),
        Some(Command::Validate(a)) => validate::run(a),
        Some(Command::Plan(a)) => plan::run(a),
        Some(Command::Status(a)) => status::run(a),
        Some(Command::ImportQuestions(a)) => import_questions::run(a),
        Some(Command::DemoData(a)) => demo_data::run(a),
        Some(Command::Bench(cmd)) => bench::run(cmd).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}

/// Load a config, or print every problem and return the bad-input exit code.
pub fn load_config(path: &std::path::Path) -> Result<qlab::config::Config, ExitCode> {
    qlab::config::Config::load(path).map_err(|errors| {
        eprintln!("{errors}");
        eprintln!("{}: {} error(s)", path.display(), errors.0.len());
        ExitCode::from(EXIT_BAD_INPUT)
    })
}
