//! Where each file of a sweep lives under runs/: the one place that knows the directory layout.
//!
//! ```text
//! runs/<sweep>/
//!   ratings.jsonl                       append-only ratings journal (all raters, all runs)
//!   answers/base/<model>/<questions>-<eval-hash>.jsonl   base-model answers, shared by the runs of a model
//!   <run-id>/
//!     spec.json                         resolved settings of the run (atomic)
//!     status.json                       state, step, last loss, pid (atomic)
//!     metrics.jsonl                     one LoggedEvent per line, append-only
//!     run.log                           tracing log of the runner
//!     lock                              advisory lock held by the process training this run (pid, host, job)
//!     job.json, job.sbatch              the SLURM job of the run (id, history) and the script qlab wrote
//!     node.json                         written first by a SLURM job on its node: proof runs/ is shared
//!     slurm-<job>.out                   the SLURM job's output
//!     checkpoints/step-00000100/        adapter + optimizer + trainer state (renamed into place when complete)
//!     stages/e1/                        the checkpoint taken at the end of epoch 1 (kept for evaluation);
//!       adapter/                        its LoRA adapter in PEFT layout
//!     answers/<stage>/<questions>-<eval-hash>.jsonl   fine-tuned answers per stage
//! ```

use std::path::{Path, PathBuf};

/// Paths of one sweep: `runs/<sweep>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepPaths {
    pub root: PathBuf,
}

impl SweepPaths {
    pub fn new(runs_dir: &Path, sweep_name: &str) -> Self {
        SweepPaths {
            root: runs_dir.join(sweep_name),
        }
    }
    pub fn ratings_journal(&self) -> PathBuf {
        self.root.join("ratings.jsonl")
    }
    pub fn base_answers(&self, model_id: &str, questions_id: &str, eval_hash: &str) -> PathBuf {
        self.root
            .join("answers")
            .join("base")
            .join(model_id)
            .join(format!("{questions_id}-{eval_hash}.jsonl"))
    }
    pub fn run(&self, run_id: &str) -> RunPaths {
        RunPaths {
            root: self.root.join(run_id),
        }
    }
}

/// Paths of one run: `runs/<sweep>/<run-id>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPaths {
    pub root: PathBuf,
}

impl RunPaths {
    pub fn spec(&self) -> PathBuf {
        self.root.join("spec.json")
    }
    pub fn status(&self) -> PathBuf {
        self.root.join("status.json")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn log(&self) -> PathBuf {
        self.root.join("run.log")
    }
    pub fn lock(&self) -> PathBuf {
        self.root.join("lock")
    }
    /// The run's SLURM job record (written on the login node at each submission).
    pub fn job_record(&self) -> PathBuf {
        self.root.join("job.json")
    }
    /// The batch script qlab wrote for the run's SLURM job.
    pub fn job_script(&self) -> PathBuf {
        self.root.join("job.sbatch")
    }
    /// Written by the SLURM job on its node before anything else.
    pub fn node_marker(&self) -> PathBuf {
        self.root.join("node.json")
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub fn checkpoint(&self, step: u64) -> PathBuf {
        self.checkpoints().join(format!("step-{step:08}"))
    }
    pub fn stage(&self, stage: &str) -> PathBuf {
        self.root.join("stages").join(stage)
    }
    /// The PEFT adapter of an evaluation stage's checkpoint.
    pub fn stage_adapter(&self, stage: &str) -> PathBuf {
        self.stage(stage).join("adapter")
    }
    pub fn answers(&self, stage: &str, questions_id: &str, eval_hash: &str) -> PathBuf {
        self.root
            .join("answers")
            .join(stage)
            .join(format!("{questions_id}-{eval_hash}.jsonl"))
    }
}

#[cfg(test)]
impl RunPaths {
    /// A run directory `r` inside a fresh temporary directory, which lives as long as the returned guard.
    pub fn in_temp_dir() -> (tempfile::TempDir, RunPaths) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let run = RunPaths {
            root: dir.path().join("r"),
        };
        (dir, run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_paths_follow_the_documented_layout() {
        let sweep = SweepPaths::new(Path::new("runs"), "demo");
        let run = sweep.run("smollm2-arith-1a2b3c4d");
        assert_eq!(
            run.checkpoint(100),
            Path::new("runs/demo/smollm2-arith-1a2b3c4d/checkpoints/step-00000100")
        );
        assert_eq!(
            run.stage("e1"),
            Path::new("runs/demo/smollm2-arith-1a2b3c4d/stages/e1")
        );
        assert_eq!(
            sweep.base_answers("smollm2", "math", "ff00"),
            Path::new("runs/demo/answers/base/smollm2/math-ff00.jsonl")
        );
    }
}
