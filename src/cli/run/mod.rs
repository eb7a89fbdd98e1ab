//! `qlab run [CONFIG] [--only RUN_ID] [--max-steps N] [--devices LIST] [--detach]`: train the sweep's runs
//! headless, resuming unfinished ones, one run per device at a time. SIGINT, SIGTERM and SIGHUP checkpoint
//! and exit cleanly (a second one exits at once). `--backend slurm` submits the cells as SLURM jobs instead,
//! and each job runs `qlab run --only RUN_ID --slurm-cell` on its node.

mod detach;
mod progress;
mod slurm;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use color_eyre::eyre::{Result, WrapErr, eyre};
use qlab::config::{BackendKind, Config, DeviceSpec, check_devices};
use qlab::model::device;
use qlab::plan::Plan;
use qlab::store::SweepPaths;
use qlab::sweep::from_plan::sweep_devices;
use qlab::sweep::reconcile::{RunAction, action_for};
use qlab::sweep::runner::Runner;
use qlab::sweep::setup::{SetupChoices, SweepSetup};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// Arguments of `qlab run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The sweep's experiments.toml.
    #[arg(default_value = "experiments.toml")]
    pub config: PathBuf,
    /// Train only this run (an id as `qlab run` lists them).
    #[arg(long, value_name = "RUN_ID")]
    pub only: Option<String>,
    /// Stop each run at this step with a checkpoint; a later `qlab run` continues it.
    #[arg(long, value_name = "N")]
    pub max_steps: Option<u64>,
    /// Train in the background, detached from this terminal (survives SSH closing); logs to the sweep dir.
    #[arg(long)]
    pub detach: bool,
    /// Train only: generate no answers after training (by default each finished run answers its question
    /// set at every stage, unless `[eval] after_training = false`).
    #[arg(long)]
    pub no_eval: bool,
    /// Train on these devices instead of the config's `device` / `devices` (`cpu`, `cuda:N`, comma separated):
    /// one run per device at a time. Run ids do not depend on the device.
    #[arg(long, alias = "device", value_name = "LIST", value_delimiter = ',', value_parser = super::parse_device)]
    pub devices: Vec<DeviceSpec>,
    /// Without a terminal, print one progress line every N steps.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub every: u64,
    /// Where the cells train: `local` (this machine) or `slurm` (one batch job per cell, submitted from
    /// here; qlab does not stay running). Default: `[cluster] backend`.
    #[arg(long, value_enum, value_name = "BACKEND")]
    pub backend: Option<BackendKind>,
    /// With the SLURM backend: print each job script and its sbatch command, submit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Set by qlab's SLURM job scripts: train the one `--only` run in this job; on SIGUSR1 (the time-limit
    /// warning) checkpoint, requeue the job and exit.
    #[arg(long, hide = true, requires = "only")]
    pub slurm_cell: bool,
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let config = Config::load(&args.config)?;
    let backend = args.backend.unwrap_or(config.cluster().backend);
    if backend == BackendKind::Slurm && !args.slurm_cell {
        return slurm::submit(&args, config);
    }
    if args.dry_run {
        return Err(eyre!(
            "--dry-run shows the job scripts of the SLURM backend: add `--backend slurm` or set `[cluster] backend = \"slurm\"`"
        ));
    }
    super::validate::preflight(&config)?;
    let plan = Plan::from_config(&config);
    let sweep = SweepPaths::new(&config.runs_dir(), &plan.sweep);
    // In a SLURM job: the marker first (it proves the node sees the run directory), the warning signal next.
    let cell = match (args.slurm_cell, args.only.as_deref()) {
        (true, Some(run)) => Some(slurm::CellJob::start(&config, &sweep.run(run))?),
        _ => None,
    };
    let mut devices = devices(&config, &args.devices)?;
    if cell.is_some() {
        // One cell per job, on the job's first device (SLURM's CUDA_VISIBLE_DEVICES makes it cuda:0).
        devices.truncate(1);
    }
    let choices = SetupChoices {
        only: args.only.as_deref(),
        devices,
        no_eval: args.no_eval,
        max_steps: args.max_steps,
    };
    let SweepSetup {
        jobs,
        loader,
        options,
        ..
    } = SweepSetup::new(&config, &plan, choices).map_err(|e| super::bad_flag("--only", e))?;
    let names: Vec<String> = options.devices.iter().map(DeviceSpec::to_string).collect();
    println!("training on {}", names.join(", "));
    for job in &jobs {
        let action =
            action_for(&sweep.run(&job.run_id)).wrap_err("cannot read the run directory")?;
        let what = match action {
            RunAction::Done => "done, skipped".to_string(),
            RunAction::Fresh => "start".to_string(),
            RunAction::Resume { step, .. } => format!("resume from step {step}"),
            RunAction::Locked { pid } => format!("trained by pid {pid}, left alone"),
        };
        println!("{:<40} {what}", job.run_id);
    }
    if args.detach {
        let log = sweep.root.join("runner.log");
        let pid = detach::spawn_detached(&detach::args_without_detach(), &log)?;
        println!(
            "training in the background: pid {pid}, log {}",
            log.display()
        );
        println!(
            "follow it with `qlab tui {}` or `qlab status {}`",
            args.config.display(),
            args.config.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    qlab::sweep::panic_guard::install_hook();
    let handle =
        Runner::spawn(sweep, jobs, loader, options).wrap_err("cannot start the runner thread")?;
    let stop = handle.stop_flag();
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, stop.clone())
            .and_then(|_| signal_hook::flag::register(signal, stop.clone()))
            .wrap_err("cannot install signal handlers")?;
    }
    if let Some(cell) = &cell {
        cell.runner_started(&stop)?;
    }
    if std::io::stdout().is_terminal() {
        let mut bars = progress::BarProgress::new();
        for (run, event) in handle.events.iter() {
            bars.event(&run, &event);
        }
    } else {
        let mut plain = progress::PlainProgress::new(args.every);
        for (run, event) in handle.events.iter() {
            if let Some(line) = plain.line(&run, &event) {
                println!("{line}");
            }
        }
    }
    let summary = handle.join();
    println!(
        "{} finished, {} failed, {} interrupted, {} skipped",
        summary.finished.len(),
        summary.failed.len(),
        summary.interrupted.len(),
        summary.skipped.len()
    );
    for lost in &summary.lost_workers {
        eprintln!("error: runner thread {lost}");
    }
    if let Some(cell) = &cell {
        cell.finish()?;
    }
    Ok(
        if !summary.failed.is_empty() || !summary.lost_workers.is_empty() {
            ExitCode::FAILURE
        } else if stop.load(std::sync::atomic::Ordering::SeqCst) {
            ExitCode::from(130)
        } else {
            ExitCode::SUCCESS
        },
    )
}

/// `--devices` when given (one value is like `device`, so `auto` is fine), else the config's devices; a list
/// is checked as `[sweep] devices` is.
fn devices(config: &Config, chosen: &[DeviceSpec]) -> Result<Vec<DeviceSpec>> {
    if chosen.len() > 1
        && let Some((_, problem)) = check_devices(chosen).into_iter().next()
    {
        return Err(super::bad_flag("--devices", problem));
    }
    Ok(if chosen.is_empty() {
        sweep_devices(config)
    } else {
        chosen.iter().copied().map(device::resolve).collect()
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn chosen(args: &[&str]) -> std::result::Result<Vec<DeviceSpec>, clap::Error> {
        Cli::try_parse_from(std::iter::once("run").chain(args.iter().copied()))
            .map(|c| c.run.devices)
    }

    const CONFIG: &str = "[sweep]\nname = \"t\"\ndevices = [\"cpu\", \"cpu\"]\n[[model]]\nid = \"m\"\npath = \"m.gguf\"\n\
        [[dataset]]\nid = \"d\"\npath = \"d.jsonl\"\ntemplate = \"{q}### Response:\\n{a}\"\n\
        [matrix]\nmodels = [\"m\"]\ndatasets = [\"d\"]\n";

    #[test]
    fn devices_flag_overrides_the_config_and_is_checked_like_it() {
        let config = Config::from_source(Path::new("t.toml"), CONFIG.to_owned()).unwrap();
        assert_eq!(
            devices(&config, &[]).unwrap(),
            [DeviceSpec::Cpu, DeviceSpec::Cpu]
        );
        let two = chosen(&["--devices", "cuda:1,cuda:0"]).unwrap();
        assert_eq!(
            devices(&config, &two).unwrap(),
            [DeviceSpec::Cuda(1), DeviceSpec::Cuda(0)]
        );
        let one = chosen(&["--device", "cpu"]).unwrap();
        assert_eq!(devices(&config, &one).unwrap(), [DeviceSpec::Cpu]);
        let twice = chosen(&["--devices", "cuda:0,cuda:0"]).unwrap();
        let err = devices(&config, &twice).unwrap_err().to_string();
        assert!(err.contains("--devices: `cuda:0` is listed twice"), "{err}");
        let err = chosen(&["--devices", "gpu"]).err().unwrap().to_string();
        assert!(err.contains("invalid device `gpu`"), "{err}");
    }
}
