//! `qlab tui [CONFIG] [--ascii] [--rater NAME]` and bare `qlab`: open the dashboard on a sweep.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use color_eyre::eyre::{Result, eyre};
use qlab::cluster::Slurm;
use qlab::cluster::submit::Submitter;
use qlab::config::BackendKind;
use qlab::plan::Plan;
use qlab::rating::context::RatingContext;
use qlab::sweep::setup::{SetupChoices, SweepSetup};
use qlab::tui::event_loop::Exit;
use qlab::tui::launch::{Launch, launch};
use qlab::tui::runner_trainer::RunnerTrainer;
use qlab::tui::{SweepInfo, Theme};

use super::rate::RaterArg;
use super::{ConfigArg, EXIT_BAD_INPUT, load_config};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Draw with ASCII symbols only (automatic when TERM is dumb or linux).
    #[arg(long)]
    pub ascii: bool,
    /// Who rates on the Rating screen (as `qlab rate --rater`).
    #[command(flatten)]
    pub rater: RaterArg,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let config = match load_config(&args.config.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        eprintln!(
            "qlab: the dashboard needs a terminal; use `qlab status` to see the sweep or `qlab run` to train"
        );
        return Ok(ExitCode::from(EXIT_BAD_INPUT));
    }
    super::validate::preflight(&config)?;
    let plan = Plan::from_config(&config);
    let sweep = SweepInfo::from_plan(&plan, &config.runs_dir());
    // Finished runs answer their question sets, as `qlab run` does.
    let setup =
        SweepSetup::new(&config, &plan, SetupChoices::default()).map_err(|e| eyre!("{e}"))?;
    let ratings = RatingContext::from_config(config.clone()).map_err(|e| {
        tracing::warn!("ratings are not shown: {e}");
        e.to_string()
    });
    let trainer = RunnerTrainer::new(setup.sweep, setup.jobs, setup.loader, setup.options);
    let exe = std::env::current_exe()?;
    // A SLURM sweep: the dashboard polls the cells' jobs and can cancel or resubmit them.
    let cluster = match config.cluster().backend {
        BackendKind::Slurm => Some(Arc::new(Submitter::new(
            config.clone(),
            plan.clone(),
            Arc::new(Slurm),
            exe.clone(),
            false,
        )?)),
        BackendKind::Local => None,
    };
    let detach = vec![
        exe.display().to_string(),
        "run".into(),
        args.config.config.display().to_string(),
        "--detach".into(),
    ];
    let theme = Theme::detect(args.ascii, std::env::var("TERM").ok().as_deref());
    tracing::info!(
        "dashboard on {} ({} runs)",
        args.config.config.display(),
        sweep.runs.len()
    );
    let exit = launch(Launch {
        sweep,
        theme,
        trainer: Some(Box::new(trainer)),
        detach_command: Some(detach),
        ratings,
        rater: args.rater.name(),
        cluster,
    })?;
    Ok(match exit {
        Exit::Quit => ExitCode::SUCCESS,
        Exit::Lost => ExitCode::FAILURE,
    })
}
