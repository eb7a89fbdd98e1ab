//! `qlab import-questions`: the study's text question lists into qlab's question-set TOML.

use std::path::PathBuf;
use std::process::ExitCode;

use color_eyre::eyre::Result;
use qlab::eval::study_questions;
use qlab::store::atomic::write_atomic;

use super::EXIT_BAD_INPUT;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The study's question file (e.g. "Maths Benchmark.txt").
    pub src: PathBuf,
    /// Task name for the set (default: math or bio, after the file's shape).
    #[arg(long)]
    pub task: Option<String>,
    /// Write the TOML here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace `--out` when it exists.
    #[arg(long, requires = "out")]
    pub force: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    if let Some(out) = &args.out {
        super::refuse_overwrite(out, args.force)?;
    }
    let set = match study_questions::import(&args.src, args.task.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
    let toml = set.to_toml();
    match &args.out {
        Some(out) => {
            write_atomic(out, toml.as_bytes())?;
            eprintln!(
                "{}: {} question(s) of task `{}`",
                out.display(),
                set.questions.len(),
                set.task
            );
        }
        None => print!("{toml}"),
    }
    Ok(ExitCode::SUCCESS)
}
