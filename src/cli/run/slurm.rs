//! `qlab run --backend slurm [--dry-run]`: submit one SLURM job per cell that needs work and return; and the
//! other end, `qlab run --only RUN_ID --slurm-cell` inside such a job: mark the node, train the cell, and on
//! the time-limit warning (SIGUSR1) checkpoint, requeue the job and exit.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use color_eyre::eyre::{Result, WrapErr, eyre};
use qlab::cluster::record::NodeMarker;
use qlab::cluster::submit::{Decision, SubmitError, Submitter};
use qlab::cluster::{Backend, Slurm};
use qlab::config::Config;
use qlab::plan::Plan;
use qlab::store::atomic::read_json;
use qlab::store::{RunPaths, RunState, RunStatus};
use signal_hook::consts::SIGUSR1;

use super::RunArgs;
use crate::cli::EXIT_BAD_INPUT;

/// Submit the cells that need work; print what was done with each.
pub fn submit(args: &RunArgs, config: Config) -> Result<ExitCode> {
    let config_arg = args.config.display().to_string();
    let plan = Plan::from_config(&config);
    let exe = std::env::current_exe().wrap_err("cannot find the qlab executable")?;
    let submitter = Submitter::new(config, plan, Arc::new(Slurm), exe, args.no_eval)
        .wrap_err("cannot resolve the config's paths")?;
    let runs = submitter
        .runs(args.only.as_deref())
        .map_err(|e| eyre!("{e}"))?;
    // Never submit a cell twice: ask the scheduler about the recorded jobs first.
    let jobs = match submitter.recorded_jobs(&runs) {
        Ok(jobs) => jobs,
        Err(e) if args.dry_run => {
            println!("(the scheduler was not asked: {e})");
            Vec::new()
        }
        Err(e) => return Err(eyre!("{e}\nnothing was submitted")),
    };
    let mut submitted = 0;
    for run in runs {
        let decision = submitter.decide(run, &jobs).map_err(|e| eyre!("{e}"))?;
        if !matches!(decision, Decision::Submit { .. }) {
            println!("{:<40} {}", run.id, decision.describe());
            continue;
        }
        if args.dry_run {
            let (path, text) = submitter.script(run);
            println!(
                "{:<40} {} (dry run: not submitted)",
                run.id,
                decision.describe()
            );
            println!("--- {} ---\n{text}--- submit with:", path.display());
            println!("{}", Slurm.submit_command(&path));
            continue;
        }
        match submitter.submit(run) {
            Ok(id) => {
                submitted += 1;
                println!(
                    "{:<40} submitted job {id} ({})",
                    run.id,
                    decision.describe()
                );
            }
            Err(e) => {
                eprintln!("qlab: {e}");
                eprintln!("{submitted} job(s) submitted before this error");
                let bad_input = matches!(e, SubmitError::Refused { .. });
                return Ok(if bad_input {
                    ExitCode::from(EXIT_BAD_INPUT)
                } else {
                    ExitCode::FAILURE
                });
            }
        }
    }
    if !args.dry_run {
        println!(
            "{submitted} job(s) submitted; follow them with `qlab status {config_arg}` or `qlab tui {config_arg}`"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// This process as one cell's SLURM job.
pub struct CellJob {
    job_id: String,
    /// Set by SIGUSR1: SLURM's warning before the time limit (or a preemption).
    warned: Arc<AtomicBool>,
    requeue: bool,
    run: RunPaths,
}

impl CellJob {
    /// Write the node marker and start listening for the warning signal.
    pub fn start(config: &Config, run: &RunPaths) -> Result<CellJob> {
        let job_id = std::env::var("SLURM_JOB_ID")
            .ok()
            .filter(|j| !j.is_empty())
            .ok_or_else(|| {
                eyre!("--slurm-cell runs inside a SLURM job ($SLURM_JOB_ID is not set)")
            })?;
        let warned = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(SIGUSR1, warned.clone())
            .wrap_err("cannot install the SIGUSR1 handler")?;
        let restarts = std::env::var("SLURM_RESTART_COUNT")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        NodeMarker::write(run, &job_id, restarts).wrap_err("cannot write the node marker")?;
        let host = qlab::store::lock::hostname().unwrap_or_default();
        println!(
            "qlab: SLURM job {job_id} on {host} (start {}) trains {}",
            restarts + 1,
            run.root.display()
        );
        Ok(CellJob {
            job_id,
            warned,
            requeue: config.cluster().requeue,
            run: run.clone(),
        })
    }

    /// The runner is up: the warning now also stops it at the next step, with a checkpoint.
    pub fn runner_started(&self, stop: &Arc<AtomicBool>) -> Result<()> {
        signal_hook::flag::register(SIGUSR1, stop.clone())
            .wrap_err("cannot install the SIGUSR1 handler")?;
        if self.warned.load(Ordering::SeqCst) {
            stop.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// After the runner: warned and not finished, the job goes back in the queue.
    pub fn finish(&self) -> Result<()> {
        if !self.warned.load(Ordering::SeqCst) {
            return Ok(());
        }
        let status: Option<RunStatus> = read_json(&self.run.status()).ok().flatten();
        if status.is_some_and(|s| s.state == RunState::Done) {
            println!("qlab: warned by SLURM, but the run is done");
            return Ok(());
        }
        if !self.requeue {
            println!(
                "qlab: checkpointed on SLURM's warning; `[cluster] requeue = false`: the next `qlab run --backend slurm` resubmits it"
            );
            return Ok(());
        }
        println!(
            "qlab: checkpointed on SLURM's warning; requeueing job {}",
            self.job_id
        );
        match Slurm.requeue(&self.job_id) {
            Ok(()) => Ok(()),
            Err(e) => {
                eprintln!(
                    "qlab: {e}; the next `qlab run --backend slurm` resubmits {}",
                    file_name(&self.run.root)
                );
                Ok(())
            }
        }
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
