//! `qlab status`: each run's state, progress, last loss and live runner (with the device it trains on), from
//! the run directories.

use std::process::ExitCode;

use color_eyre::eyre::Result;
use qlab::plan::Plan;
use qlab::store::{RunPaths, RunStatus, SweepPaths, atomic::read_json, lock};
use qlab::watch::RunHistory;
use qlab::watch::eta::format_duration;
use serde::{Deserialize, Serialize};

use super::{ConfigArg, load_config};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Row {
    id: String,
    state: String,
    step: u64,
    total_steps: u64,
    last_loss: Option<f64>,
    /// Seconds left while a live runner trains (warm-up excluded), from the metrics log.
    eta_secs: Option<f64>,
    /// Pid of the live process training the run, if any.
    runner_pid: Option<u32>,
    /// The device a live run trains on (from its spec.json).
    device: Option<String>,
    reason: Option<String>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let config = match load_config(&args.config.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let plan = Plan::from_config(&config);
    let sweep = SweepPaths::new(&config.runs_dir(), &plan.sweep);
    let mut rows = Vec::new();
    for r in &plan.runs {
        let paths = sweep.run(&r.id);
        let status: Option<RunStatus> = read_json(&paths.status())?;
        let runner_pid = lock::holder(&paths);
        let device = runner_pid.and_then(|_| spec_device(&paths));
        // A metrics log with unreadable lines still yields an ETA from the lines that parse.
        let eta_secs = match RunHistory::load(&r.id, &paths) {
            Ok((history, _bad_lines)) if runner_pid.is_some() => history.eta_secs(),
            _ => None,
        };
        rows.push(match status {
            Some(s) => Row {
                id: r.id.clone(),
                state: state_name(&s, runner_pid),
                step: s.step,
                total_steps: s.total_steps,
                last_loss: s.last_loss,
                eta_secs,
                runner_pid,
                device,
                reason: s.reason,
            },
            None => Row {
                id: r.id.clone(),
                state: "queued".into(),
                step: 0,
                total_steps: 0,
                last_loss: None,
                eta_secs,
                runner_pid,
                device,
                reason: None,
            },
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let width = rows.iter().map(|r| r.id.len()).max().unwrap_or(3).max(3);
    println!(
        "{:width$}  {:<12} {:>13} {:>9} {:>9}  runner",
        "run", "state", "step", "loss", "eta"
    );
    for r in &rows {
        let loss = r
            .last_loss
            .map(|l| format!("{l:.4}"))
            .unwrap_or_else(|| "-".into());
        let pid = match (r.runner_pid, &r.device) {
            (Some(p), Some(d)) => format!("pid {p} on {d}"),
            (Some(p), None) => format!("pid {p}"),
            (None, _) => "-".into(),
        };
        let step = format!("{}/{}", r.step, r.total_steps);
        let eta = r
            .eta_secs
            .map(format_duration)
            .unwrap_or_else(|| "-".into());
        println!(
            "{:width$}  {:<12} {:>13} {:>9} {eta:>9}  {pid}",
            r.id, r.state, step, loss
        );
        if let Some(reason) = &r.reason {
            println!("{:width$}  {reason}", "");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The `device` of the run's spec.json: the one its runner trains it on.
fn spec_device(paths: &RunPaths) -> Option<String> {
    #[derive(Deserialize)]
    struct Spec {
        device: String,
    }
    read_json::<Spec>(&paths.spec())
        .ok()
        .flatten()
        .map(|s| s.device)
}

/// A status that says "training" with no live process holding the lock was left by a crash: resumable.
fn state_name(s: &RunStatus, runner: Option<u32>) -> String {
    let state = serde_json::to_value(s.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    match (s.state, runner) {
        (qlab::store::RunState::Training | qlab::store::RunState::Evaluating, None) => {
            "interrupted".into()
        }
        _ => state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_runs_device_comes_from_its_spec() {
        let dir = tempfile::tempdir().unwrap();
        let paths = RunPaths {
            root: dir.path().to_owned(),
        };
        assert_eq!(spec_device(&paths), None);
        std::fs::write(paths.spec(), r#"{"run_id": "r", "device": "cuda:1"}"#).unwrap();
        assert_eq!(spec_device(&paths).as_deref(), Some("cuda:1"));
    }
}
