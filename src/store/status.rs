//! A run's status.json: its state, progress and owner, written atomically on every change of state.

use serde::{Deserialize, Serialize};

/// Lifecycle state of a run as stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Queued,
    Training,
    Evaluating,
    Done,
    Failed,
    Interrupted,
}

/// Contents of `status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    pub state: RunState,
    pub step: u64,
    pub total_steps: u64,
    pub last_loss: Option<f64>,
    /// Process that wrote this status while running (check the lock to know whether it still lives).
    pub pid: Option<u32>,
    /// Why the run failed or was interrupted.
    pub reason: Option<String>,
    /// Seconds since the Unix epoch.
    pub updated: f64,
}

impl RunStatus {
    pub fn queued(total_steps: u64) -> Self {
        RunStatus {
            state: RunState::Queued,
            step: 0,
            total_steps,
            last_loss: None,
            pid: None,
            reason: None,
            updated: 0.0,
        }
    }
}
