//! Submitting a sweep's cells as jobs: one job per cell that still needs work. Finished cells are skipped,
//! cells whose recorded job is still queued or running are left alone (the scheduler is asked first), and a
//! cell whose lock is held is not touched: the run lock stays the judge. Each submission keeps its script in
//! the run directory and its job id in `job.json`. When sbatch refuses a job, its own message comes back
//! with the config line that caused it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, Diagnostic};
use crate::plan::{Plan, PlannedRun};
use crate::store::atomic::write_atomic;
use crate::store::lock::{LockHolder, holder_info};
use crate::store::{RunPaths, StoreError, SweepPaths};
use crate::sweep::reconcile::{RunAction, action_for};

use super::record::JobRecord;
use super::script::JobSpec;
use super::{Backend, ClusterError, JobInfo};

/// What submitting does with a cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Finished: skipped.
    Done,
    /// Its recorded job is queued or running: not submitted again.
    Queued(JobInfo),
    /// A live process holds the run's lock.
    Locked(LockHolder),
    /// Needs a job: from scratch, or resuming from a checkpoint at this step.
    Submit { resume_from: Option<u64> },
}

impl Decision {
    pub fn describe(&self) -> String {
        match self {
            Decision::Done => "done, skipped".into(),
            Decision::Queued(job) => {
                format!("job {} is {}, not submitted again", job.id, job.describe())
            }
            Decision::Locked(h) => format!("trained by pid {h}, left alone"),
            Decision::Submit { resume_from: None } => "start".into(),
            Decision::Submit {
                resume_from: Some(step),
            } => format!("resume from step {step}"),
        }
    }
}

/// Why a cell could not be submitted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{0}")]
    Cluster(#[from] ClusterError),
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The scheduler refused the job: its message, and the config line that caused it when one can tell.
    #[error("{run}: {source}{}", .place.as_ref().map(|d| format!("\n{d}")).unwrap_or_default())]
    Refused {
        run: String,
        source: ClusterError,
        place: Option<Box<Diagnostic>>,
    },
    #[error("no run `{0}` in the plan (see `qlab plan`)")]
    UnknownRun(String),
}

/// Submits the cells of one sweep.
pub struct Submitter {
    config: Config,
    plan: Plan,
    sweep: SweepPaths,
    backend: Arc<dyn Backend>,
    /// The config file, absolute: what the jobs read.
    config_path: PathBuf,
    /// The qlab binary the jobs run unless `[cluster] qlab` names one.
    default_qlab: PathBuf,
    /// Jobs answer no question sets after training (`qlab run --no-eval`).
    no_eval: bool,
}

impl Submitter {
    pub fn new(
        config: Config,
        plan: Plan,
        backend: Arc<dyn Backend>,
        default_qlab: PathBuf,
        no_eval: bool,
    ) -> std::io::Result<Submitter> {
        let config_path = std::path::absolute(&config.path)?;
        let runs_dir = std::path::absolute(config.runs_dir())?;
        let sweep = SweepPaths::new(&runs_dir, &plan.sweep);
        Ok(Submitter {
            config,
            plan,
            sweep,
            backend,
            config_path,
            default_qlab,
            no_eval,
        })
    }

    pub fn sweep(&self) -> &SweepPaths {
        &self.sweep
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// The runs of the plan, or only `only`.
    pub fn runs(&self, only: Option<&str>) -> Result<Vec<&PlannedRun>, SubmitError> {
        match only {
            None => Ok(self.plan.runs.iter().collect()),
            Some(id) => self
                .plan
                .run(id)
                .map(|r| vec![r])
                .ok_or_else(|| SubmitError::UnknownRun(id.to_string())),
        }
    }

    /// What the scheduler knows of the jobs recorded in these runs' directories.
    pub fn recorded_jobs(&self, runs: &[&PlannedRun]) -> Result<Vec<JobInfo>, ClusterError> {
        let mut ids = Vec::new();
        for r in runs {
            if let Some(rec) = JobRecord::read(&self.sweep.run(&r.id))? {
                ids.push(rec.job_id);
            }
        }
        self.backend.query(&ids)
    }

    /// What to do with `run`, given what the scheduler knows (`jobs`).
    pub fn decide(&self, run: &PlannedRun, jobs: &[JobInfo]) -> Result<Decision, SubmitError> {
        let paths = self.sweep.run(&run.id);
        if let Some(rec) = JobRecord::read(&paths)?
            && let Some(job) = jobs.iter().find(|j| j.id == rec.job_id && j.is_active())
        {
            return Ok(Decision::Queued(job.clone()));
        }
        Ok(match action_for(&paths)? {
            RunAction::Done => Decision::Done,
            RunAction::Locked { pid } => {
                Decision::Locked(holder_info(&paths).unwrap_or(LockHolder {
                    pid,
                    host: None,
                    job: None,
                }))
            }
            RunAction::Resume { step, .. } => Decision::Submit {
                resume_from: Some(step),
            },
            RunAction::Fresh => Decision::Submit { resume_from: None },
        })
    }

    /// The job of one cell.
    pub fn job_spec(&self, run: &PlannedRun) -> JobSpec {
        let settings = self.config.cell_cluster(&run.model, &run.dataset);
        let qlab = settings
            .qlab
            .as_deref()
            .map(|q| self.config.resolve_path(q))
            .unwrap_or_else(|| self.default_qlab.clone());
        let mut command = vec![
            qlab.display().to_string(),
            "run".into(),
            self.config_path.display().to_string(),
            "--only".into(),
            run.id.clone(),
            "--slurm-cell".into(),
        ];
        if self.no_eval {
            command.push("--no-eval".into());
        }
        JobSpec {
            name: format!("qlab-{}-{}", self.plan.sweep, run.id),
            run_id: run.id.clone(),
            run_dir: self.sweep.run(&run.id).root,
            workdir: self
                .config_path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("/")),
            settings,
            command,
        }
    }

    /// The script of a cell's job and where it is kept.
    pub fn script(&self, run: &PlannedRun) -> (PathBuf, String) {
        let paths = self.sweep.run(&run.id);
        (paths.job_script(), self.backend.script(&self.job_spec(run)))
    }

    /// Write the cell's script into its run directory and submit it; the job id, recorded in `job.json`.
    pub fn submit(&self, run: &PlannedRun) -> Result<String, SubmitError> {
        let paths: RunPaths = self.sweep.run(&run.id);
        let (path, text) = self.script(run);
        write_atomic(&path, text.as_bytes())?;
        let id = match self.backend.submit(&path) {
            Ok(id) => id,
            Err(source @ ClusterError::Refused { .. }) => {
                let place = self.blame(run, &source.to_string()).map(Box::new);
                return Err(SubmitError::Refused {
                    run: run.id.clone(),
                    source,
                    place,
                });
            }
            Err(e) => return Err(e.into()),
        };
        JobRecord::write_new(&paths, self.backend.name(), &id)?;
        Ok(id)
    }

    /// The config line behind a refusal, told from the scheduler's message (`invalid partition ...`).
    fn blame(&self, run: &PlannedRun, message: &str) -> Option<Diagnostic> {
        let s = self.config.cell_cluster(&run.model, &run.dataset);
        let m = message.to_lowercase();
        let candidates: [(&str, &[&str], bool); 7] = [
            ("partition", &["partition"], s.partition.is_some()),
            ("account", &["account"], s.account.is_some()),
            ("qos", &["qos"], s.qos.is_some()),
            ("time", &["time limit"], s.time.is_some()),
            ("gres", &["gres", "generic resource"], s.gres.is_some()),
            (
                "gpus",
                &["gres", "generic resource", "gpu"],
                s.gpus.is_some(),
            ),
            ("mem", &["memory"], s.mem.is_some()),
        ];
        let (key, _, _) = candidates
            .iter()
            .find(|(_, words, set)| *set && words.iter().any(|w| m.contains(w)))?;
        let place = self.config.cluster_key_place(&run.model, &run.dataset, key);
        Some(self.config.diagnostic(
            &place,
            format!(
                "the `{key}` setting that sbatch refused (the job script is {})",
                self.sweep.run(&run.id).job_script().display()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Slurm;
    use crate::store::RunLock;
    use crate::store::atomic::write_json_atomic;
    use crate::store::{RunState, RunStatus};

    fn submitter(dir: &Path, extra: &str) -> Submitter {
        let src = format!(
            "[sweep]\nname = \"s\"\n[[model]]\nid = \"m\"\npath = \"m.gguf\"\n[[dataset]]\nid = \"d\"\npath = \"d.jsonl\"\n\
             template = \"{{q}}### Response:\\n{{a}}\"\n[[dataset]]\nid = \"e\"\npath = \"e.jsonl\"\n\
             template = \"{{q}}### Response:\\n{{a}}\"\n[matrix]\nmodels = [\"m\"]\ndatasets = [\"d\", \"e\"]\n{extra}"
        );
        let path = dir.join("s.toml");
        std::fs::write(&path, &src).unwrap();
        let config = Config::load(&path).unwrap();
        let plan = Plan::from_config(&config);
        Submitter::new(config, plan, Arc::new(Slurm), "/opt/qlab".into(), false).unwrap()
    }

    fn job(id: &str, state: &str) -> JobInfo {
        JobInfo {
            id: id.into(),
            state: state.into(),
            reason: None,
            node: None,
            elapsed: None,
        }
    }

    #[test]
    fn done_queued_and_locked_cells_are_not_submitted() {
        let dir = tempfile::tempdir().unwrap();
        let s = submitter(dir.path(), "");
        let runs = s.runs(None).unwrap();
        let (d, e) = (runs[0], runs[1]);
        assert_eq!(
            s.decide(d, &[]).unwrap(),
            Decision::Submit { resume_from: None }
        );
        let (path, script) = s.script(d);
        assert_eq!(path, s.sweep.run(&d.id).job_script());
        let command = format!(
            "exec /opt/qlab run {} --only {} --slurm-cell\n",
            s.config_path.display(),
            d.id
        );
        assert!(script.ends_with(&command), "{script}");
        JobRecord::write_new(&s.sweep.run(&d.id), "slurm", "41").unwrap();
        let queued = s.decide(d, &[job("41", "PENDING")]).unwrap();
        assert!(
            matches!(&queued, Decision::Queued(j) if j.id == "41"),
            "{queued:?}"
        );
        assert_eq!(queued.describe(), "job 41 is PENDING, not submitted again");
        // A job that ended, or one the scheduler forgot, does not hold the cell.
        assert_eq!(
            s.decide(d, &[job("41", "TIMEOUT")]).unwrap(),
            Decision::Submit { resume_from: None }
        );
        assert_eq!(
            s.decide(d, &[job("40", "RUNNING")]).unwrap(),
            Decision::Submit { resume_from: None }
        );
        let mut status = RunStatus::queued(4);
        status.state = RunState::Done;
        write_json_atomic(&s.sweep.run(&e.id).status(), &status).unwrap();
        assert_eq!(s.decide(e, &[]).unwrap(), Decision::Done);
        std::fs::remove_file(s.sweep.run(&e.id).status()).unwrap();
        let _lock = RunLock::acquire(&s.sweep.run(&e.id)).unwrap();
        let locked = s.decide(e, &[]).unwrap();
        assert!(
            matches!(&locked, Decision::Locked(h) if h.pid == std::process::id()),
            "{locked:?}"
        );
        assert!(
            locked.describe().starts_with("trained by pid"),
            "{}",
            locked.describe()
        );
        assert!(matches!(
            s.runs(Some("nope")),
            Err(SubmitError::UnknownRun(_))
        ));
    }

    #[test]
    fn a_refusal_names_the_config_line_that_caused_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = submitter(
            dir.path(),
            "[cluster]\nbackend = \"slurm\"\npartition = \"nope\"\n[[override]]\ndataset = \"e\"\ncluster = { partition = \"nope2\" }\n",
        );
        let runs = s.runs(None).unwrap();
        let message = "sbatch refused: invalid partition specified: nope";
        let place = s.blame(runs[0], message).unwrap().to_string();
        assert!(
            place.contains("s.toml:19:13: the `partition` setting that sbatch refused"),
            "{place}"
        );
        let place = s.blame(runs[1], message).unwrap().to_string();
        assert!(
            place.contains("s.toml:22:25: the `partition` setting"),
            "{place}"
        );
        assert_eq!(
            s.blame(
                runs[0],
                "sbatch refused: Requested node configuration is not available"
            ),
            None
        );
    }
}
