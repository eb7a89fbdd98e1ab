//! `qlab export results --xlsx FILE | --csv FILE | --md FILE | --svg FILE | --png FILE`: the ratings as
//! files to share, the results as a figure;
//! `qlab export adapter RUN_ID --stage e3 --out DIR`: a trained stage's LoRA adapter in PEFT layout.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use color_eyre::eyre::{Result, WrapErr, bail};

use qlab::plan::Plan;
use qlab::rating::context::RatingContext;
use qlab::rating::export::{judgements_csv, write_xlsx};
use qlab::rating::figure;
use qlab::rating::results_format::{Format, render};
use qlab::store::SweepPaths;
use qlab::store::atomic::write_atomic;

use super::load_config;

/// What to export.
#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// The ratings: an xlsx workbook in the study's layout, every judgement as CSV, the table as Markdown,
    /// the results as a figure (SVG or PNG).
    Results(ExportResultsArgs),
    /// A trained stage's LoRA adapter (PEFT layout: adapter_model.safetensors + adapter_config.json).
    Adapter(ExportAdapterArgs),
}

#[derive(Debug, Args)]
pub struct ExportAdapterArgs {
    /// The run (its id as `qlab plan` prints it).
    pub run_id: String,
    /// The stage to export (e1, e3, ...); default: the run's last stage.
    #[arg(long)]
    pub stage: Option<String>,
    /// The directory to create.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub config: ExportConfig,
}

/// The sweep's config, positional as in every other command; `--config` (the older spelling) still works.
#[derive(Debug, Args)]
pub struct ExportConfig {
    /// The sweep's experiments.toml [default: experiments.toml].
    #[arg(value_name = "CONFIG")]
    config: Option<PathBuf>,
    /// The same as CONFIG.
    #[arg(
        long = "config",
        value_name = "CONFIG",
        hide = true,
        conflicts_with = "config"
    )]
    config_flag: Option<PathBuf>,
}

impl ExportConfig {
    pub fn path(&self) -> PathBuf {
        self.config
            .clone()
            .or_else(|| self.config_flag.clone())
            .unwrap_or_else(|| PathBuf::from("experiments.toml"))
    }
}

#[derive(Debug, Args)]
pub struct ExportResultsArgs {
    #[command(flatten)]
    pub config: ExportConfig,
    /// One sheet per task (File Name | Question Number | one column per criterion) and a Summary sheet.
    #[arg(long)]
    pub xlsx: Option<PathBuf>,
    /// Every standing judgement: rater, task, question, model, stage, scores, note, reference flag.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// The results table in Markdown.
    #[arg(long)]
    pub md: Option<PathBuf>,
    /// The results as a figure, SVG: per task a panel of bars (model x stage) with 95% error bars.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// The same figure as a PNG image.
    #[arg(long)]
    pub png: Option<PathBuf>,
    /// Replace output files that exist.
    #[arg(long)]
    pub force: bool,
}

pub fn run(command: ExportCommand) -> Result<ExitCode> {
    match command {
        ExportCommand::Results(args) => results(args),
        ExportCommand::Adapter(args) => adapter(args),
    }
}

fn adapter(args: ExportAdapterArgs) -> Result<ExitCode> {
    let config_path = args.config.path();
    let config = match load_config(&config_path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let plan = Plan::from_config(&config);
    let Some(run) = plan.run(&args.run_id) else {
        let ids: Vec<&str> = plan.runs.iter().map(|r| r.id.as_str()).collect();
        return Err(super::bad_input(format!(
            "error: no run {:?} in {} (runs: {})",
            args.run_id,
            config_path.display(),
            ids.join(", ")
        )));
    };
    let stage = match &args.stage {
        Some(s) => s.clone(),
        None => run.stages.last().cloned().unwrap_or_default(),
    };
    if stage == "base" || !run.stages.contains(&stage) {
        return Err(super::bad_flag(
            "--stage",
            format!(
                "run {} has no trained stage {stage:?} (stages: {})",
                run.id,
                run.stages[1..].join(", ")
            ),
        ));
    }
    let src = SweepPaths::new(&config.runs_dir(), &plan.sweep)
        .run(&run.id)
        .stage_adapter(&stage);
    if !src.join("adapter_config.json").is_file() {
        bail!(
            "{}: stage {stage} is not trained yet (no adapter); `qlab run` trains it",
            src.display()
        );
    }
    if args.out.exists() {
        return Err(super::bad_input(format!(
            "error: {} already exists: choose a new directory",
            args.out.display()
        )));
    }
    let tmp = args
        .out
        .with_extension(format!("tmp-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).wrap_err_with(|| format!("cannot create {}", tmp.display()))?;
    for entry in
        std::fs::read_dir(&src).wrap_err_with(|| format!("cannot read {}", src.display()))?
    {
        let from = entry?.path();
        if let Some(name) = from.file_name() {
            std::fs::copy(&from, tmp.join(name))
                .wrap_err_with(|| format!("cannot copy {}", from.display()))?;
        }
    }
    std::fs::rename(&tmp, &args.out)
        .wrap_err_with(|| format!("cannot create {}", args.out.display()))?;
    println!(
        "{}: adapter of {} at {stage} (PEFT layout)",
        args.out.display(),
        run.id
    );
    Ok(ExitCode::SUCCESS)
}

fn results(args: ExportResultsArgs) -> Result<ExitCode> {
    let outputs = [&args.xlsx, &args.csv, &args.md, &args.svg, &args.png];
    if outputs.iter().all(|o| o.is_none()) {
        return Err(super::bad_input(
            "error: say where to write: --xlsx FILE, --csv FILE, --md FILE, --svg FILE and/or --png FILE",
        ));
    }
    for path in outputs.into_iter().flatten() {
        super::refuse_overwrite(path, args.force)?;
    }
    let config = match load_config(&args.config.path()) {
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
    if let Some(path) = &args.svg {
        let svg = figure::svg(&tasks, &ctx.rubric)
            .wrap_err_with(|| format!("{} not written", path.display()))?;
        write_atomic(path, svg.as_bytes())?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.png {
        let png = figure::png(&tasks, &ctx.rubric)
            .wrap_err_with(|| format!("{} not written", path.display()))?;
        write_atomic(path, &png)?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
