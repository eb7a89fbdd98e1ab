//! `qlab status`: each run's state, progress, last loss and live runner (with the device it trains on), from
//! the run directories; for cells submitted to SLURM, each job's id and state as squeue tells it.

use std::process::ExitCode;

use color_eyre::eyre::Result;
use qlab::cluster::Slurm;
use qlab::cluster::poll::{CellJob, snapshot};
use qlab::plan::Plan;
use qlab::store::{RunPaths, RunStatus, SweepPaths, atomic::read_json, lock};
use qlab::watch::RunHistory;
use qlab::watch::eta::format_duration;
use serde::{Deserialize, Serialize};

use super::{ConfigAndJson, load_config};

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
    /// Its host and SLURM job, from the lock file.
    runner_host: Option<String>,
    runner_job: Option<String>,
    /// The device a live run trains on (from its spec.json).
    device: Option<String>,
    reason: Option<String>,
    /// The run's SLURM job, when one was submitted.
    slurm: Option<SlurmRow>,
}

/// A cell's SLURM job as squeue (or sacct) tells it.
#[derive(Serialize)]
struct SlurmRow {
    job_id: String,
    /// PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, PREEMPTED, CANCELLED, ...; UNKNOWN when the scheduler
    /// forgot the job; null when it could not be asked (`stale`).
    state: Option<String>,
    reason: Option<String>,
    node: Option<String>,
    elapsed: Option<String>,
    /// The scheduler could not be asked; `error` says why.
    stale: bool,
    error: Option<String>,
    /// A hint when the job ended before its first write on the node.
    hint: Option<String>,
}

impl SlurmRow {
    fn new(job: &CellJob, error: Option<&str>) -> SlurmRow {
        let info = job.info.as_ref();
        SlurmRow {
            job_id: job.job_id.clone(),
            state: match (error, info) {
                (Some(_), _) => None,
                (None, Some(i)) => Some(i.state.clone()),
                (None, None) => Some("UNKNOWN".into()),
            },
            reason: info.and_then(|i| i.reason.clone()),
            node: info.and_then(|i| i.node.clone()),
            elapsed: info.and_then(|i| i.elapsed.clone()),
            stale: error.is_some(),
            error: error.map(str::to_owned),
            hint: job.marker_hint(),
        }
    }

    fn text(&self) -> String {
        let state = match (&self.state, &self.error) {
            (Some(s), _) if s == "UNKNOWN" => "UNKNOWN (not in squeue/sacct)".to_string(),
            (Some(s), _) => {
                let mut t = s.clone();
                if let Some(r) = &self.reason {
                    t.push_str(&format!(" ({r})"));
                }
                if let Some(n) = &self.node {
                    t.push_str(&format!(" on {n}"));
                }
                if s == "RUNNING"
                    && let Some(e) = &self.elapsed
                {
                    t.push_str(&format!(" {e}"));
                }
                t
            }
            (None, _) => "state unknown (stale: squeue unreachable)".to_string(),
        };
        format!("job {} {state}", self.job_id)
    }
}

pub fn run(args: ConfigAndJson) -> Result<ExitCode> {
    let config = match load_config(&args.config.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let plan = Plan::from_config(&config);
    let sweep = SweepPaths::new(&config.runs_dir(), &plan.sweep);
    let ids: Vec<String> = plan.runs.iter().map(|r| r.id.clone()).collect();
    let (jobs, cluster_error) = snapshot(&sweep, &ids, &Slurm);
    let cluster_error = cluster_error.map(|e| e.to_string());
    if let Some(e) = &cluster_error {
        eprintln!("qlab: {e}; the SLURM states below are stale");
    }
    let mut rows = Vec::new();
    for r in &plan.runs {
        let paths = sweep.run(&r.id);
        let status: Option<RunStatus> = read_json(&paths.status())?;
        let holder = lock::holder_info(&paths);
        let runner_pid = holder.as_ref().map(|h| h.pid);
        let runner_host = holder.as_ref().and_then(|h| h.host.clone());
        let runner_job = holder.as_ref().and_then(|h| h.job.clone());
        let slurm = jobs
            .iter()
            .find(|j| j.run == r.id)
            .map(|j| SlurmRow::new(j, cluster_error.as_deref()));
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
                runner_host,
                runner_job,
                device,
                reason: s.reason,
                slurm,
            },
            None => Row {
                id: r.id.clone(),
                state: "queued".into(),
                step: 0,
                total_steps: 0,
                last_loss: None,
                eta_secs,
                runner_pid,
                runner_host,
                runner_job,
                device,
                reason: None,
                slurm,
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
        let mut pid = match (r.runner_pid, &r.device) {
            (Some(p), Some(d)) => format!("pid {p} on {d}"),
            (Some(p), None) => format!("pid {p}"),
            (None, _) => "-".into(),
        };
        if r.runner_pid.is_some()
            && let Some(host) = &r.runner_host
        {
            pid.push_str(&format!(" @{host}"));
        }
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
        if let Some(job) = &r.slurm {
            println!("{:width$}  slurm: {}", "", job.text());
            if let Some(hint) = &job.hint {
                println!("{:width$}  {hint}", "");
            }
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
