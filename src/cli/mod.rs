//! Command-line interface: one clap command per file; each parses its arguments and calls the library.

mod generate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// qlab: run QLoRA fine-tuning experiments end to end.
#[derive(Debug, Parser)]
#[command(name = "qlab", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a continuation of one prompt (raw, or as a chat turn with --chat).
    Generate(generate::GenerateArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => Ok(()),
        Some(Command::Generate(args)) => generate::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:?}");
            ExitCode::FAILURE
        }
    }
}
