//! Command-line interface: one clap command per file; each parses its arguments and calls the library.

mod bench;
mod demo_data;
mod eval;
mod exit;
pub mod export;
mod generate;
mod import_questions;
pub mod import_study;
mod logging;
mod plan;
pub mod rate;
pub mod results;
mod run;
mod status;
mod tui;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use color_eyre::eyre::{Result, eyre};

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
    Plan(ConfigAndJson),
    /// Train the sweep's runs headless (resuming unfinished ones), with progress on the terminal.
    Run(run::RunArgs),
    /// Show each run's state, progress, last loss, ETA and live runner.
    Status(ConfigAndJson),
    /// Convert one of the study's question lists (text) into qlab's question-set TOML.
    ImportQuestions(import_questions::Args),
    /// Regenerate the demo sweep's arithmetic word problems (data/arith.jsonl).
    DemoData(demo_data::Args),
    /// Rate answers blind with the keyboard, two stages side by side (saved at every key).
    Rate(rate::RateArgs),
    /// Print the results table: per task, models x stages, mean over all rubric values, and the automatic check.
    Results(results::ResultsArgs),
    /// Write results to files (xlsx in the study's layout, csv, md).
    #[command(subcommand)]
    Export(export::ExportCommand),
    /// Import the study's 42 raw benchmark files as answers and ratings (rater `study`).
    ImportStudy(import_study::ImportStudyArgs),
    /// Generate a continuation of one prompt (raw, or as a chat turn with --chat).
    Generate(generate::GenerateArgs),
    /// Generate answers to the question sets: base once per model, then each trained stage (resumable).
    Eval(eval::Args),
    /// Benchmarks (training step and answering speed, and memory).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Open the dashboard on a sweep (what bare `qlab` does).
    Tui(tui::Args),
}

/// The config path argument every sweep command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// Path of the experiments file.
    #[arg(default_value = "experiments.toml")]
    pub config: PathBuf,
}

/// A sweep command that prints a table or, with `--json`, the same rows as JSON.
#[derive(Debug, clap::Args)]
pub struct ConfigAndJson {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Print JSON (an array of the table's rows) instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub use exit::{EXIT_BAD_INPUT, bad_flag, bad_input, refuse_overwrite};

pub fn main() -> ExitCode {
    if let Err(e) = color_eyre::install() {
        eprintln!("qlab: {e}");
    }
    let cli = Cli::parse();
    let _log = logging::init();
    let result = match cli.command {
        None => tui::run(tui::Args {
            config: ConfigArg {
                config: "experiments.toml".into(),
            },
            ascii: false,
            rater: rate::RaterArg::default(),
        }),
        Some(Command::Validate(a)) => validate::run(a),
        Some(Command::Plan(a)) => plan::run(a),
        Some(Command::Run(a)) => run::run(a),
        Some(Command::Status(a)) => status::run(a),
        Some(Command::ImportQuestions(a)) => import_questions::run(a),
        Some(Command::DemoData(a)) => demo_data::run(a),
        Some(Command::Rate(a)) => rate::run(a),
        Some(Command::Results(a)) => results::run(a),
        Some(Command::Export(c)) => export::run(c),
        Some(Command::ImportStudy(a)) => import_study::run(a),
        Some(Command::Generate(a)) => generate::run(a),
        Some(Command::Eval(a)) => eval::run(a),
        Some(Command::Bench(cmd)) => bench::run(cmd).map(|()| ExitCode::SUCCESS),
        Some(Command::Tui(a)) => tui::run(a),
    };
    exit::finish(result)
}

/// Load a config, or print every problem and return the bad-input exit code.
pub fn load_config(path: &std::path::Path) -> Result<qlab::config::Config, ExitCode> {
    qlab::config::Config::load(path).map_err(|errors| {
        eprintln!("{errors}");
        eprintln!("{}: {} error(s)", path.display(), errors.0.len());
        ExitCode::from(EXIT_BAD_INPUT)
    })
}

/// A `--device` value: `auto`, `cpu` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<qlab::config::DeviceSpec, String> {
    qlab::config::DeviceSpec::try_from(s.trim().to_string())
}

/// candle's device for a `--device` choice (`auto`: the first GPU when this build has CUDA, else the CPU).
pub fn open_device(spec: qlab::config::DeviceSpec) -> Result<candle_core::Device> {
    let name = qlab::model::device::resolve(spec);
    candle_core::Device::try_from(spec).map_err(|e| eyre!("device {name}: {e}"))
}
