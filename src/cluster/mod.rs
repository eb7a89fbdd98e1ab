//! Cells as batch jobs of a cluster scheduler, driven from the login node: the [`Backend`] seam (write a job
//! script, submit, query, cancel, requeue), its SLURM implementation over sbatch/squeue/scancel/scontrol, the
//! job record kept in each run directory, the submission of a sweep, and the poller the dashboard runs.
//! No scheduler of our own: the cluster schedules, the run directories and their locks stay the truth.

pub mod poll;
pub mod record;
pub mod script;
pub mod slurm;
pub mod submit;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::store::StoreError;

pub use script::JobSpec;
pub use slurm::Slurm;

/// What the scheduler knows of one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: String,
    /// The scheduler's own word: PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, PREEMPTED, CANCELLED, ...
    pub state: String,
    /// Why a pending job waits (Priority, Resources, BeginTime, ...).
    pub reason: Option<String>,
    /// Where it runs or ran.
    pub node: Option<String>,
    /// Run time so far, as the scheduler writes it (`1:02:03`).
    pub elapsed: Option<String>,
}

/// States in which a job is queued or running, so that submitting the cell again would train it twice.
const ACTIVE: [&str; 12] = [
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "RESV_DEL_HOLD",
];

impl JobInfo {
    /// Queued or running: the cell must not be submitted again.
    pub fn is_active(&self) -> bool {
        ACTIVE.contains(&self.state.as_str())
    }

    /// `PENDING (Resources)`, `RUNNING on node1 0:42`, `TIMEOUT on node1`.
    pub fn describe(&self) -> String {
        let mut text = self.state.clone();
        if let Some(r) = &self.reason {
            text.push_str(&format!(" ({r})"));
        }
        if let Some(n) = &self.node {
            text.push_str(&format!(" on {n}"));
        }
        if self.state == "RUNNING"
            && let Some(e) = &self.elapsed
        {
            text.push_str(&format!(" {e}"));
        }
        text
    }
}

/// Failures talking to the scheduler, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "`{tool}` is not on PATH: run qlab on the cluster's login node, or make SLURM's commands available (e.g. `module load slurm`)"
    )]
    Missing { tool: &'static str },
    #[error("{tool} refused: {message}")]
    Refused { tool: &'static str, message: String },
    #[error("{tool} failed (is the scheduler reachable?): {message}")]
    Unreachable { tool: &'static str, message: String },
    #[error("cannot read {tool}'s output {line:?}: {expected}")]
    Output {
        tool: &'static str,
        line: String,
        expected: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A cluster scheduler as qlab drives it. SLURM is the one built ([`Slurm`]); another scheduler (PBS, LSF)
/// would implement these five operations and be picked by `[cluster] backend`.
pub trait Backend: Send + Sync {
    /// The backend's name in the config (`slurm`).
    fn name(&self) -> &'static str;
    /// The batch script of one cell's job.
    fn script(&self, job: &JobSpec) -> String;
    /// The command line that submits `script` (shown by `--dry-run`).
    fn submit_command(&self, script: &Path) -> String;
    /// Submit `script`; the new job's id.
    fn submit(&self, script: &Path) -> Result<String, ClusterError>;
    /// What the scheduler knows of `ids`; jobs it has forgotten are left out.
    fn query(&self, ids: &[String]) -> Result<Vec<JobInfo>, ClusterError>;
    fn cancel(&self, id: &str) -> Result<(), ClusterError>;
    /// From inside job `id`: put it back in the queue (it starts again from its checkpoint).
    fn requeue(&self, id: &str) -> Result<(), ClusterError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_states_and_descriptions() {
        let job = |state: &str, reason: Option<&str>, node: Option<&str>| JobInfo {
            id: "7".into(),
            state: state.into(),
            reason: reason.map(Into::into),
            node: node.map(Into::into),
            elapsed: Some("0:42".into()),
        };
        assert!(job("PENDING", Some("Priority"), None).is_active());
        assert!(job("RUNNING", None, Some("n1")).is_active());
        assert!(!job("TIMEOUT", None, Some("n1")).is_active());
        assert!(!job("CANCELLED", None, None).is_active());
        assert_eq!(
            job("PENDING", Some("Resources"), None).describe(),
            "PENDING (Resources)"
        );
        assert_eq!(
            job("RUNNING", None, Some("n1")).describe(),
            "RUNNING on n1 0:42"
        );
        assert_eq!(job("FAILED", None, Some("n1")).describe(), "FAILED on n1");
    }
}
