//! The runner: named OS threads, one per device, that own all model state and train a sweep's runs from one
//! queue in plan order, reporting `(run_id, RunEvent)` over one channel and taking [`RunnerCommand`]s.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # fn demo(sweep: qlab::store::SweepPaths, jobs: Vec<qlab::sweep::job::RunJob>,
//! #         loader: Arc<dyn qlab::sweep::job::ModelLoader>) -> std::io::Result<()> {
//! use qlab::config::DeviceSpec;
//! use qlab::sweep::runner::{Runner, RunnerOptions};
//! let options = RunnerOptions { devices: vec![DeviceSpec::Cuda(0), DeviceSpec::Cuda(1)], ..Default::default() };
//! let handle = Runner::spawn(sweep, jobs, loader, options)?;
//! for (run_id, event) in handle.events.iter() {
//!     println!("{run_id}: {event:?}"); // ends when the sweep is over
//! }
//! let summary = handle.join();
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use super::events::{RunEvent, RunnerCommand};
use super::job::{ModelLoader, RunEvaluator, RunJob};
use super::panic_guard::payload_message;
use super::worker::{Shared, run_worker, thread_names};
use crate::config::DeviceSpec;
use crate::store::SweepPaths;
use crate::train::checkpoint::{FileWriter, FsWriter};

/// How the runner behaves.
#[derive(Clone)]
pub struct RunnerOptions {
    /// Stop each run (with a checkpoint, resumable) once it reaches this step.
    pub max_steps: Option<u64>,
    /// Writes checkpoint files (the file system; tests inject failures).
    pub writer: Arc<dyn FileWriter>,
    /// Period of `Telemetry` events.
    pub telemetry_every: Duration,
    /// Answers the question sets after each run's training (None: training only).
    pub evaluator: Option<Arc<dyn RunEvaluator>>,
    /// One worker thread per device (`"cpu"`, `"cuda:N"`; `cpu` may repeat), each training the next queued
    /// run on its device. Empty: one worker, each run on its job's own `device`.
    pub devices: Vec<DeviceSpec>,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            max_steps: None,
            writer: Arc::new(FsWriter),
            telemetry_every: Duration::from_secs(1),
            evaluator: None,
            devices: Vec::new(),
        }
    }
}

/// What happened to each run of the sweep in this process (each list in plan order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepSummary {
    pub finished: Vec<String>,
    pub failed: Vec<String>,
    pub interrupted: Vec<String>,
    pub skipped: Vec<String>,
    /// Worker threads that died outside any run (a bug in the runner itself): thread name and panic message.
    pub lost_workers: Vec<String>,
}

impl SweepSummary {
    fn merge(mut self, other: SweepSummary) -> SweepSummary {
        self.finished.extend(other.finished);
        self.failed.extend(other.failed);
        self.interrupted.extend(other.interrupted);
        self.skipped.extend(other.skipped);
        self.lost_workers.extend(other.lost_workers);
        self
    }

    fn sort_by_plan(&mut self, order: &HashMap<String, usize>) {
        for list in [
            &mut self.finished,
            &mut self.failed,
            &mut self.interrupted,
            &mut self.skipped,
        ] {
            list.sort_by_key(|id| order.get(id).copied());
        }
    }
}

/// The caller's side of a running sweep.
pub struct RunnerHandle {
    /// Every event of every run, in order per run; disconnects when the sweep is over.
    pub events: Receiver<(String, RunEvent)>,
    /// One command channel per worker: a command reaches them all.
    commands: Vec<Sender<RunnerCommand>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<SweepSummary>>,
    order: HashMap<String, usize>,
}

impl RunnerHandle {
    /// Send a command to the runs in progress (every worker gets it); false once the runner has ended.
    pub fn send(&self, command: RunnerCommand) -> bool {
        let delivered = self
            .commands
            .iter()
            .filter(|c| c.send(command).is_ok())
            .count();
        delivered > 0
    }

    /// The flag a signal handler sets: checkpoint at the next step boundary, end the runs as interrupted and
    /// stop the sweep (for signal-hook's `flag::register`).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(JoinHandle::is_finished)
    }

    /// Wait for the sweep to end. A worker that panicked outside a run (runs' own panics are caught and
    /// reported as `RunFailed`) is listed in `lost_workers`, never hidden.
    pub fn join(self) -> SweepSummary {
        let mut summary = self
            .threads
            .into_iter()
            .map(|t| {
                let name = t.thread().name().unwrap_or("qlab-runner").to_owned();
                t.join().unwrap_or_else(|payload| SweepSummary {
                    lost_workers: vec![format!("{name}: {}", payload_message(payload.as_ref()))],
                    ..SweepSummary::default()
                })
            })
            .fold(SweepSummary::default(), SweepSummary::merge);
        summary.sort_by_plan(&self.order);
        summary
    }
}

/// Starts runner threads.
pub struct Runner;

impl Runner {
    /// Train `jobs` in order: finished runs are skipped, unfinished ones resume from their newest checkpoint,
    /// locked ones (another process) are left alone. One worker thread per device of `options.devices`
    /// (`qlab-runner` when there is one, else `qlab-runner-cuda0`, ...) takes the next job of the shared
    /// queue. A failed run does not stop the sweep, nor does `max_steps`; a stop or cancel does.
    pub fn spawn(
        sweep: SweepPaths,
        jobs: Vec<RunJob>,
        loader: Arc<dyn ModelLoader>,
        options: RunnerOptions,
    ) -> std::io::Result<RunnerHandle> {
        let (tx, events) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let devices: Vec<Option<DeviceSpec>> = match options.devices.as_slice() {
            [] => vec![None],
            list => list.iter().copied().map(Some).collect(),
        };
        let names = thread_names(&options.devices);
        let shared = Arc::new(Shared::new(sweep, jobs, loader, options, stop.clone()));
        let order = shared.order().into_iter().zip(0..).collect();
        let mut commands = Vec::new();
        let mut threads = Vec::new();
        for (device, name) in devices.into_iter().zip(names) {
            let (command_tx, command_rx) = mpsc::channel();
            let (shared, tx) = (shared.clone(), tx.clone());
            let spawned = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    let work = move || run_worker(&shared, device, &tx, &command_rx);
                    match own_pool(&name) {
                        Some(pool) => pool.install(work),
                        None => work(),
                    }
                });
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    // The workers already started checkpoint and end: nobody would watch them.
                    stop.store(true, Ordering::SeqCst);
                    return Err(e);
                }
            }
            commands.push(command_tx);
        }
        Ok(RunnerHandle {
            events,
            commands,
            stop,
            threads,
            order,
        })
    }
}

/// A rayon pool of its own for worker `name` (as many threads as the global pool, each named as the worker),
/// on which the worker runs its jobs: a CPU step's serial parts then run on one of the pool's threads instead
/// of a thread beside them (on 2 cores, three runnable threads: the pool's two were preempted about 25,000
/// times a second), and two CPU workers never run parts of each other's steps. None if the pool cannot be
/// built (the worker then runs on its own thread, as before).
fn own_pool(name: &str) -> Option<rayon::ThreadPool> {
    let name = name.to_owned();
    let built = rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .thread_name(move |_| name.clone())
        .build();
    match built {
        Ok(pool) => Some(pool),
        Err(e) => {
            tracing::warn!("worker pool: {e}; training on the worker thread");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::own_pool;

    #[test]
    fn a_workers_pool_runs_its_jobs_on_threads_named_as_the_worker() {
        let pool = own_pool("worker cpu").expect("a pool");
        assert_eq!(pool.current_num_threads(), rayon::current_num_threads());
        let names: Vec<Option<String>> =
            pool.install(|| rayon::broadcast(|_| std::thread::current().name().map(str::to_owned)));
        assert!(
            names.iter().all(|n| n.as_deref() == Some("worker cpu")),
            "{names:?}"
        );
    }
}
