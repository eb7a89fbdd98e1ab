//! Plan versus run directories: for each run, whether it is done, resumes from a checkpoint, starts fresh,
//! or is held by another live process. Shown before anything runs, and used by the runner.

use std::path::PathBuf;

use crate::store::atomic::read_json;
use crate::store::lock::holder;
use crate::store::{RunPaths, RunState, RunStatus, StoreError};
use crate::train::checkpoint;

/// What `qlab run` will do with a run.
#[derive(Debug, Clone, PartialEq)]
pub enum RunAction {
    /// Finished earlier: skipped.
    Done,
    /// Continue from the newest complete checkpoint.
    Resume { step: u64, checkpoint: PathBuf },
    /// No checkpoint: train from step 0.
    Fresh,
    /// Another live process trains it.
    Locked { pid: u32 },
}

/// Decide what to do with `run` from its status, checkpoints and lock.
pub fn action_for(run: &RunPaths) -> Result<RunAction, StoreError> {
    if let Some(pid) = holder(run) {
        return Ok(RunAction::Locked { pid });
    }
    let status: Option<RunStatus> = read_json(&run.status())?;
    if status.is_some_and(|s| s.state == RunState::Done) {
        return Ok(RunAction::Done);
    }
    Ok(match checkpoint::newest(run) {
        Some(found) => RunAction::Resume {
            step: found.state.step,
            checkpoint: found.dir,
        },
        None => RunAction::Fresh,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RunLock;
    use crate::store::atomic::write_json_atomic;

    #[test]
    fn done_runs_are_skipped_and_others_start_fresh() {
        let (_dir, run) = RunPaths::in_temp_dir();
        assert_eq!(action_for(&run).unwrap(), RunAction::Fresh);
        let mut status = RunStatus::queued(10);
        status.state = RunState::Done;
        write_json_atomic(&run.status(), &status).unwrap();
        assert_eq!(action_for(&run).unwrap(), RunAction::Done);
        let _lock = RunLock::acquire(&run).unwrap();
        assert_eq!(
            action_for(&run).unwrap(),
            RunAction::Locked {
                pid: std::process::id()
            }
        );
    }
}
