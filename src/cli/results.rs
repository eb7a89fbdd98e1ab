//! `qlab results [CONFIG] [--format table|md|csv|json]`: the study's results table from the ratings journal
//! (the text table with each cell's 95% interval and each run's training loss), and beside it the
//! automatic check of the answers, there before any rating.

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use color_eyre::eyre::Result;

use qlab::rating::context::RatingContext;
use qlab::rating::results_format::{Format, render, render_table};

use super::{ConfigArg, load_config};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Table,
    Md,
    Csv,
    Json,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Table => Format::Table,
            FormatArg::Md => Format::Markdown,
            FormatArg::Csv => Format::Csv,
            FormatArg::Json => Format::Json,
        }
    }
}

/// Print the results table: per task, models x stages, mean over all rubric values; and the automatic
/// check (auto: exact answer) of tasks whose references are numbers.
#[derive(Debug, Args)]
pub struct ResultsArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[arg(long, value_enum, default_value = "table")]
    pub format: FormatArg,
}

pub fn run(args: ResultsArgs) -> Result<ExitCode> {
    let config = match load_config(&args.config.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let ctx = RatingContext::from_config(config)?;
    let tasks = ctx.results()?;
    if tasks.iter().all(|t| t.cells.is_empty()) {
        eprintln!(
            "no ratings yet in {}",
            ctx.sweep.ratings_journal().display()
        );
    }
    let text = match args.format {
        // The text table shows each run's training loss beside its scores, as the Results screen does.
        FormatArg::Table => render_table(&tasks, &ctx.losses()?),
        other => render(&tasks, other.into())?,
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
