//! Command-line interface: one clap command per file; each parses its arguments and calls the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;

/// qlab: run QLoRA fine-tuning experiments end to end.
#[derive(Debug, Parser)]
#[command(name = "qlab", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Benchmarks (training step speed and memory).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => ExitCode::SUCCESS,
        Some(Command::Bench(cmd)) => match bench::run(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("Error: {e:?}");
                ExitCode::FAILURE
            }
        },
    }
}
