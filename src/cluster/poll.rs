//! The cells' jobs as the scheduler sees them, read on demand (`qlab status`) or by a named thread that the
//! dashboard starts (`qlab-cluster-poll`): it asks the scheduler every few seconds, and cancels or resubmits
//! a cell's job when asked, so that no scheduler command ever runs on the dashboard's loop.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use crate::store::SweepPaths;

use super::record::{JobRecord, NodeMarker};
use super::submit::{Decision, Submitter};
use super::{Backend, ClusterError, JobInfo};

/// One cell's job: the one recorded in its run directory and what the scheduler says of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CellJob {
    pub run: String,
    pub job_id: String,
    /// None: the scheduler does not know the job (any more).
    pub info: Option<JobInfo>,
    /// The job ended without writing its marker on the node: the node may not see the run directory.
    pub no_marker: bool,
}

impl CellJob {
    /// `PENDING (Priority)`, `RUNNING on n1 0:42`, or `UNKNOWN` when the scheduler forgot the job.
    pub fn state_text(&self) -> String {
        match &self.info {
            Some(info) => info.describe(),
            None => "UNKNOWN (not in squeue/sacct)".into(),
        }
    }

    /// A hint for a job that failed before its first write on the node.
    pub fn marker_hint(&self) -> Option<String> {
        self.no_marker.then(|| {
            format!(
                "job {} ended before writing node.json: is the runs directory on a filesystem the nodes can see? (see slurm-{}.out)",
                self.job_id, self.job_id
            )
        })
    }
}

/// The recorded jobs of `runs` and their states; `Err` when the scheduler could not be asked (the records
/// alone are then all there is).
pub fn snapshot(
    sweep: &SweepPaths,
    runs: &[String],
    backend: &dyn Backend,
) -> (Vec<CellJob>, Option<ClusterError>) {
    let records: Vec<(String, JobRecord)> = runs
        .iter()
        .filter_map(|r| match JobRecord::read(&sweep.run(r)) {
            Ok(Some(rec)) => Some((r.clone(), rec)),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        })
        .collect();
    let ids: Vec<String> = records.iter().map(|(_, r)| r.job_id.clone()).collect();
    let (known, error) = match backend.query(&ids) {
        Ok(k) => (Some(k), None),
        Err(e) => (None, Some(e)),
    };
    let jobs = records
        .into_iter()
        .map(|(run, rec)| {
            let info = known
                .as_ref()
                .and_then(|k| k.iter().find(|j| j.id == rec.job_id).cloned());
            let ended_early = info
                .as_ref()
                .is_some_and(|i| matches!(i.state.as_str(), "FAILED" | "NODE_FAIL" | "BOOT_FAIL"));
            let marked = NodeMarker::read(&sweep.run(&run)).is_some_and(|m| m.job_id == rec.job_id);
            CellJob {
                run,
                job_id: rec.job_id,
                info,
                no_marker: ended_early && !marked,
            }
        })
        .collect();
    (jobs, error)
}

/// What the dashboard asks of the poller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Cancel the run's recorded job.
    Cancel { run: String },
    /// Submit the run again (refused while its job is queued or running, or its lock is held).
    Resubmit { run: String },
}

/// What the poller tells the dashboard.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// The jobs of the sweep's cells (cells without a recorded job are left out).
    Jobs(Vec<CellJob>),
    /// The scheduler could not be asked: the states shown are the last known, now stale.
    Unreachable(String),
    /// The outcome of a request, for the notice line.
    Done(String),
}

/// Start the poller thread: every `every`, and after each request, a [`Report::Jobs`] (or
/// [`Report::Unreachable`]) goes to `report`; it ends when `requests` closes or `report` returns false.
pub fn spawn(
    submitter: Arc<Submitter>,
    every: Duration,
    requests: Receiver<Request>,
    mut report: impl FnMut(Report) -> bool + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("qlab-cluster-poll".into())
        .spawn(move || {
            let runs: Vec<String> = submitter.plan().runs.iter().map(|r| r.id.clone()).collect();
            loop {
                let (jobs, error) = snapshot(submitter.sweep(), &runs, submitter.backend());
                let sent = match error {
                    Some(e) => report(Report::Unreachable(e.to_string())),
                    None => report(Report::Jobs(jobs)),
                };
                if !sent {
                    return;
                }
                match requests.recv_timeout(every) {
                    Ok(request) => {
                        if !report(Report::Done(perform(&submitter, request))) {
                            return;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })
}

/// Carry out one request; the sentence for the notice line.
fn perform(submitter: &Submitter, request: Request) -> String {
    match request {
        Request::Cancel { run } => match JobRecord::read(&submitter.sweep().run(&run)) {
            Ok(Some(rec)) => match submitter.backend().cancel(&rec.job_id) {
                Ok(()) => format!("cancelled job {} of {run}", rec.job_id),
                Err(e) => format!("could not cancel job {}: {e}", rec.job_id),
            },
            Ok(None) => format!("{run} has no job to cancel"),
            Err(e) => e.to_string(),
        },
        Request::Resubmit { run } => {
            let outcome = submitter.runs(Some(&run)).and_then(|runs| {
                let planned = runs[0];
                let jobs = submitter.recorded_jobs(&runs)?;
                match submitter.decide(planned, &jobs)? {
                    Decision::Submit { resume_from } => {
                        let id = submitter.submit(planned)?;
                        Ok(format!(
                            "submitted job {id} for {run} ({})",
                            Decision::Submit { resume_from }.describe()
                        ))
                    }
                    other => Ok(format!("{run}: {}", other.describe())),
                }
            });
            outcome.unwrap_or_else(|e| e.to_string())
        }
    }
}
