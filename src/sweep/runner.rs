//! The runner: a named OS thread that owns all model state and trains a sweep's runs in order, reporting
//! `(run_id, RunEvent)` over a channel and taking [`RunnerCommand`]s.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # fn demo(sweep: qlab::store::SweepPaths, jobs: Vec<qlab::sweep::job::RunJob>,
//! #         loader: Arc<dyn qlab::sweep::job::ModelLoader>) -> std::io::Result<()> {
//! use qlab::sweep::runner::{Runner, RunnerOptions};
//! let handle = Runner::spawn(sweep, jobs, loader, RunnerOptions::default())?;
//! for (run_id, event) in handle.events.iter() {
//!     println!("{run_id}: {event:?}"); // ends when the sweep is over
//! }
//! let summary = handle.join();
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use super::control::Control;
use super::events::{RunEvent, RunnerCommand};
use super::job::{ModelLoader, RunJob};
use super::train_run::{JobContext, JobOutcome, train_job};
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
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            max_steps: None,
            writer: Arc::new(FsWriter),
            telemetry_every: Duration::from_secs(1),
        }
    }
}

/// What happened to each run of the sweep in this process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepSummary {
    pub finished: Vec<String>,
    pub failed: Vec<String>,
    pub interrupted: Vec<String>,
    pub skipped: Vec<String>,
}

/// The caller's side of a running sweep.
pub struct RunnerHandle {
    /// Every event of every run, in order; disconnects when the sweep is over.
    pub events: Receiver<(String, RunEvent)>,
    commands: Sender<RunnerCommand>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<SweepSummary>,
}

impl RunnerHandle {
    /// Send a command to the run in progress; false once the runner has ended.
    pub fn send(&self, command: RunnerCommand) -> bool {
        self.commands.send(command).is_ok()
    }

    /// The flag a signal handler sets: checkpoint at the next step boundary, end the run as interrupted and
    /// stop the sweep (for signal-hook's `flag::register`).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Wait for the sweep to end.
    pub fn join(self) -> SweepSummary {
        self.thread.join().unwrap_or_default()
    }
}

/// Starts runner threads.
pub struct Runner;

impl Runner {
    /// Train `jobs` in order on a new thread named `qlab-runner`: finished runs are skipped, unfinished ones
    /// resume from their newest checkpoint, locked ones (another process) are left alone. A failed run does
    /// not stop the sweep; a stop or cancel does.
    pub fn spawn(
        sweep: SweepPaths,
        jobs: Vec<RunJob>,
        loader: Arc<dyn ModelLoader>,
        options: RunnerOptions,
    ) -> std::io::Result<RunnerHandle> {
        let (tx, events) = mpsc::channel();
        let (commands, command_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("qlab-runner".into())
            .spawn(move || {
                run_sweep(
                    &sweep,
                    &jobs,
                    loader.as_ref(),
                    &options,
                    &tx,
                    &command_rx,
                    &flag,
                )
            })?;
        Ok(RunnerHandle {
            events,
            commands,
            stop,
            thread,
        })
    }
}

fn run_sweep(
    sweep: &SweepPaths,
    jobs: &[RunJob],
    loader: &dyn ModelLoader,
    options: &RunnerOptions,
    tx: &Sender<(String, RunEvent)>,
    commands: &Receiver<RunnerCommand>,
    stop: &AtomicBool,
) -> SweepSummary {
    let mut summary = SweepSummary::default();
    for job in jobs {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let mut ctx = JobContext {
            paths: sweep.run(&job.run_id),
            tx: tx.clone(),
            control: Control::new(commands, stop),
            options,
            loader,
        };
        let outcome = train_job(&mut ctx, job);
        let id = job.run_id.clone();
        match outcome {
            JobOutcome::Finished => summary.finished.push(id),
            JobOutcome::Failed => summary.failed.push(id),
            JobOutcome::Skipped => summary.skipped.push(id),
            JobOutcome::Interrupted => {
                summary.interrupted.push(id);
                break;
            }
        }
    }
    summary
}
