//! The runner's workers: one thread per device, each taking the next job of the sweep's shared queue in plan
//! order, training it on its device and evaluating it on the same thread, until the queue is empty or the
//! sweep stops. One worker is today's sequential runner.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};

use super::control::Control;
use super::eval_run::{EvalOutcome, evaluate_job};
use super::events::{RunEvent, RunnerCommand};
use super::job::{ModelLoader, RunJob};
use super::runner::{RunnerOptions, SweepSummary};
use super::train_run::{JobContext, JobOutcome, train_job};
use crate::config::DeviceSpec;
use crate::store::SweepPaths;

/// What all workers of one sweep share: the queue, the loader, the options and the stop flags.
pub struct Shared {
    pub sweep: SweepPaths,
    pub loader: Arc<dyn ModelLoader>,
    pub options: RunnerOptions,
    /// Set by a signal handler: every worker checkpoints and ends.
    pub stop: Arc<AtomicBool>,
    jobs: Vec<RunJob>,
    next: AtomicUsize,
    /// Set when a stop or cancel ended a run: no worker takes another job.
    halted: AtomicBool,
}

impl Shared {
    /// The queue holds each run once (a run listed twice is trained once), in the order given.
    pub fn new(
        sweep: SweepPaths,
        jobs: Vec<RunJob>,
        loader: Arc<dyn ModelLoader>,
        options: RunnerOptions,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let mut seen = std::collections::HashSet::new();
        let jobs = jobs
            .into_iter()
            .filter(|j| seen.insert(j.run_id.clone()))
            .collect();
        Shared {
            sweep,
            loader,
            options,
            stop,
            jobs,
            next: AtomicUsize::new(0),
            halted: AtomicBool::new(false),
        }
    }

    /// The run ids in queue order.
    pub fn order(&self) -> Vec<String> {
        self.jobs.iter().map(|j| j.run_id.clone()).collect()
    }

    fn ending(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.halted.load(Ordering::SeqCst)
    }

    /// The next job nobody has taken (each index is handed out once), unless the sweep is ending.
    fn take(&self) -> Option<&RunJob> {
        if self.ending() {
            return None;
        }
        self.jobs.get(self.next.fetch_add(1, Ordering::SeqCst))
    }
}

/// The names of the worker threads: `qlab-runner` alone, else one per device (`qlab-runner-cuda1`, and
/// `qlab-runner-cpu0`, `qlab-runner-cpu1`, ... for repeated CPU workers).
pub fn thread_names(devices: &[DeviceSpec]) -> Vec<String> {
    if devices.len() <= 1 {
        return vec!["qlab-runner".to_string()];
    }
    let mut cpus = 0;
    devices
        .iter()
        .map(|d| match d {
            DeviceSpec::Cuda(n) => format!("qlab-runner-cuda{n}"),
            _ => {
                cpus += 1;
                format!("qlab-runner-{d}{}", cpus - 1)
            }
        })
        .collect()
}

/// Train and evaluate jobs from the queue on `device` (None: each job on its own device) until the queue is
/// empty, a stop or cancel ends one of this worker's runs, or another worker's did.
pub fn run_worker(
    shared: &Shared,
    device: Option<DeviceSpec>,
    tx: &Sender<(String, RunEvent)>,
    commands: &Receiver<RunnerCommand>,
) -> SweepSummary {
    let mut summary = SweepSummary::default();
    while let Some(queued) = shared.take() {
        let mut job = queued.clone();
        if let Some(d) = device {
            job.device = d;
        }
        let mut ctx = JobContext {
            paths: shared.sweep.run(&job.run_id),
            tx: tx.clone(),
            control: Control::new(commands, &shared.stop),
            options: &shared.options,
            loader: shared.loader.as_ref(),
        };
        let mut outcome = train_job(&mut ctx, &job);
        let id = job.run_id;
        // A run finished now or earlier gets its answers (complete answer files are skipped quickly).
        if let (JobOutcome::Finished | JobOutcome::Skipped, Some(evaluator)) =
            (&outcome, &shared.options.evaluator)
            && !shared.ending()
        {
            match evaluate_job(
                &ctx.paths,
                &id,
                job.device,
                evaluator.as_ref(),
                &mut ctx.control,
                tx,
            ) {
                EvalOutcome::Done => {}
                EvalOutcome::Stopped => outcome = JobOutcome::Interrupted { stop_sweep: true },
                EvalOutcome::Failed => outcome = JobOutcome::Failed,
            }
        }
        match outcome {
            JobOutcome::Finished => summary.finished.push(id),
            JobOutcome::Failed => summary.failed.push(id),
            JobOutcome::Skipped => summary.skipped.push(id),
            JobOutcome::Interrupted { stop_sweep } => {
                summary.interrupted.push(id);
                if stop_sweep {
                    shared.halted.store(true, Ordering::SeqCst);
                    break;
                }
            }
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainSection;
    use crate::sweep::from_plan::train_settings;
    use crate::sweep::job::{LoadError, LoadedModel};
    use crate::train::settings::{DatasetSpec, OnBadRow, TrainOn};

    struct NoModel;

    impl ModelLoader for NoModel {
        fn load(&self, job: &RunJob) -> Result<LoadedModel, LoadError> {
            Err(LoadError::NotInPlan(job.run_id.clone()))
        }
    }

    fn job(id: &str) -> RunJob {
        RunJob {
            run_id: id.into(),
            model: "m".into(),
            device: DeviceSpec::Cpu,
            data: DatasetSpec {
                path: "d.csv".into(),
                format: None,
                limit: None,
                template: String::new(),
                completion_marker: None,
                fields: Default::default(),
                train_on: TrainOn::All,
                on_bad_row: OnBadRow::Error,
            },
            train: train_settings(&TrainSection::default(), 1),
        }
    }

    fn shared(ids: &[&str]) -> Shared {
        Shared::new(
            SweepPaths::new(std::path::Path::new("/nowhere"), "s"),
            ids.iter().map(|id| job(id)).collect(),
            Arc::new(NoModel),
            RunnerOptions::default(),
            Arc::new(AtomicBool::new(false)),
        )
    }

    #[test]
    fn concurrent_workers_take_every_run_once_in_plan_order() {
        let queue = shared(&["a", "b", "a", "c", "d", "e", "f", "g"]);
        assert_eq!(queue.order(), ["a", "b", "c", "d", "e", "f", "g"]);
        let taken: Vec<Vec<String>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..3)
                .map(|_| {
                    s.spawn(|| {
                        std::iter::from_fn(|| queue.take().map(|j| j.run_id.clone()))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        for mine in &taken {
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "plan order: {mine:?}");
        }
        let mut all: Vec<String> = taken.into_iter().flatten().collect();
        all.sort();
        assert_eq!(all, queue.order(), "each run taken exactly once");
    }

    #[test]
    fn a_halted_or_stopped_sweep_hands_out_nothing() {
        let queue = shared(&["a", "b"]);
        queue.halted.store(true, Ordering::SeqCst);
        assert!(queue.take().is_none());
        let queue = shared(&["a", "b"]);
        queue.stop.store(true, Ordering::SeqCst);
        assert!(queue.take().is_none());
    }

    fn names(devices: &[&str]) -> Vec<String> {
        let specs: Vec<DeviceSpec> = devices
            .iter()
            .map(|d| DeviceSpec::try_from(d.to_string()).unwrap())
            .collect();
        thread_names(&specs)
    }

    #[test]
    fn one_worker_keeps_the_old_name_and_several_are_named_by_device() {
        assert_eq!(names(&[]), ["qlab-runner"]);
        assert_eq!(names(&["cuda:1"]), ["qlab-runner"]);
        assert_eq!(
            names(&["cuda:0", "cuda:1"]),
            ["qlab-runner-cuda0", "qlab-runner-cuda1"]
        );
        assert_eq!(
            names(&["cpu", "cpu", "cpu"]),
            ["qlab-runner-cpu0", "qlab-runner-cpu1", "qlab-runner-cpu2"]
        );
    }
}
