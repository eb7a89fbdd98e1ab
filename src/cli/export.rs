//! `qlab export results --xlsx FILE | --csv FILE | --md FILE`: the ratings as files to share.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use color_eyre::eyre::{Result, bail};

use qlab::rating::context::RatingContext;
use qlab::rating::export::{judgements_csv, write_xlsx};
use qlab::rating::results_format::{Format, render};
use qlab::store::atomic::write_atomic;

use super::load_config;

/// What to export.
#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// The ratings: an xlsx workbook in the study's layout, every judgement as CSV, the table as Markdown.
    Results(ExportResultsArgs),
}

#[derive(Debug, Args)]
pub struct ExportResultsArgs {
    /// The sweep's config.
    #[arg(long, default_value = "experiments.toml")]
    pub config: PathBuf,
    /// One sheet per task (File Name | Question Number | one column per criterion) and a Summary sheet.
    #[arg(long)]
    pub xlsx: Option<PathBuf>,
    /// Every standing judgement: rater, task, question, model, stage, scores, note, reference flag.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// The results table in Markdown.
    #[arg(long)]
    pub md: Option<PathBuf>,
}

pub fn run(command: ExportCommand) -> Result<ExitCode> {
    match command {
        ExportCommand::Results(args) => results(args),
    }
}

fn results(args: ExportResultsArgs) -> Result<ExitCode> {
    if args.xlsx.is_none() && args.csv.is_none() && args.md.is_none() {
        bail!("say where to write: --xlsx FILE, --csv FILE and/or --md FILE");
    }
    let config = match load_config(&args.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let ctx = RatingContext::from_config(config)?;
    let ratings = ctx.ratings()?;
    let tasks = ctx.results()?;
    if let Some(path) = &args.xlsx {
        write_xlsx(path, &ratings, &ctx.rubric, &tasks, &ctx.model_order)?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.csv {
        write_atomic(path, judgements_csv(&ratings, &ctx.rubric)?.as_bytes())?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.md {
        write_atomic(path, render(&tasks, Format::Markdown)?.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
