//! The runner thread: commands (pause, resume, stop after checkpoint, cancel), a non-finite loss failing one
//! run while the sweep goes on, the per-run lock, `max_steps`, and memory that stays flat over 300 steps.
//! Several devices: see `workers`.

#[path = "train_runner/workers.rs"]
mod workers;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use candle_core::{Device, Tensor, Var};
use qlab::store::RunLock;
use qlab::store::SweepPaths;
use qlab::sweep::events::{RunEvent, RunnerCommand};
use qlab::sweep::job::{LoadError, LoadedModel, ModelLoader, RunJob};
use qlab::sweep::metrics_log::read_events;
use qlab::sweep::runner::{Runner, RunnerHandle, RunnerOptions};
use qlab::sweep::toy::{toy_job as job, write_toy_csv};
use qlab::train::TrainError;
use qlab::train::model::{Batch, TrainableModel};
use qlab::train::toy::{ByteEncoder, ToyConfig, ToyModel};
use workers::Rendezvous;

/// The toy model, returning a NaN loss on the `nan_at`-th call when set.
struct Toy {
    inner: ToyModel,
    calls: std::cell::Cell<usize>,
    nan_at: Option<usize>,
    /// Where the second micro-batch waits until `parties` runs reached theirs.
    gate: Option<(Arc<Rendezvous>, usize)>,
}

impl TrainableModel for Toy {
    fn trainable(&self) -> Vec<(String, Var)> {
        self.inner.trainable()
    }
    fn loss_and_grads(&self, batch: &Batch) -> Result<(f32, Vec<Tensor>), TrainError> {
        self.calls.set(self.calls.get() + 1);
        // The run's first Step event is sent before its second micro-batch starts.
        if let Some((gate, parties)) = &self.gate
            && self.calls.get() == 2
        {
            gate.meet("second micro-batch", *parties)
                .map_err(TrainError::Model)?;
        }
        let (loss, grads) = self.inner.loss_and_grads(batch)?;
        Ok((
            if Some(self.calls.get()) == self.nan_at {
                f32::NAN
            } else {
                loss
            },
            grads,
        ))
    }
    fn save_adapter(&self, dir: &Path) -> Result<(), TrainError> {
        self.inner.save_adapter(dir)
    }
    fn load_adapter(&mut self, dir: &Path) -> Result<(), TrainError> {
        self.inner.load_adapter(dir)
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
}

/// Loads the toy model; runs whose id starts with "nan" get a NaN loss at their 7th micro-batch.
struct ToyLoader;

impl ModelLoader for ToyLoader {
    fn load(&self, job: &RunJob) -> Result<LoadedModel, LoadError> {
        toy(job, None)
    }
}

fn toy(job: &RunJob, gate: Option<(Arc<Rendezvous>, usize)>) -> Result<LoadedModel, LoadError> {
    let inner = ToyModel::new(ToyConfig {
        vocab: 257,
        hidden: 48,
        rank: 4,
        seed: 5,
    })
    .map_err(|source| LoadError::Build {
        model: job.model.clone(),
        source: Box::new(source),
    })?;
    let nan_at = job.run_id.starts_with("nan").then_some(7);
    let model = Toy {
        inner,
        calls: Default::default(),
        nan_at,
        gate,
    };
    Ok(LoadedModel {
        model: Box::new(model),
        encoder: Box::new(ByteEncoder),
        pad_id: 0,
    })
}

fn write_data(dir: &Path, rows: usize) -> PathBuf {
    write_toy_csv(dir, rows).unwrap()
}

/// The memory test reads the whole process's RSS, to which every other test's runner adds its threads (each
/// worker's thread pool) and allocations while it runs: that test runs alone, the others side by side.
static PROCESS: RwLock<()> = RwLock::new(());

/// A turn beside the other tests (not beside the memory test).
fn side_by_side() -> RwLockReadGuard<'static, ()> {
    PROCESS.read().unwrap_or_else(|e| e.into_inner())
}

/// The process to this test alone.
fn alone() -> RwLockWriteGuard<'static, ()> {
    PROCESS.write().unwrap_or_else(|e| e.into_inner())
}

fn spawn(root: &Path, jobs: Vec<RunJob>, options: RunnerOptions) -> RunnerHandle {
    Runner::spawn(
        SweepPaths::new(root, "s"),
        jobs,
        Arc::new(ToyLoader),
        options,
    )
    .unwrap()
}

fn steps(events: &[(String, RunEvent)], run: &str) -> Vec<u64> {
    events
        .iter()
        .filter_map(|(r, e)| match e {
            RunEvent::Step(m) if r == run => Some(m.step),
            _ => None,
        })
        .collect()
}

#[test]
fn a_nan_loss_fails_that_run_with_step_and_batch_and_the_sweep_goes_on() {
    let _process = side_by_side();
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path(), 10);
    let handle = spawn(
        dir.path(),
        vec![job("nan-run", &data, 1), job("ok-run", &data, 1)],
        RunnerOptions::default(),
    );
    let events: Vec<_> = handle.events.iter().collect();
    let summary = handle.join();
    assert_eq!(
        (summary.failed, summary.finished),
        (vec!["nan-run".to_string()], vec!["ok-run".to_string()])
    );
    let reason = events
        .iter()
        .find_map(|(_, e)| match e {
            RunEvent::RunFailed { reason, step } => Some((reason.clone(), *step)),
            _ => None,
        })
        .unwrap();
    assert!(
        reason.0.contains("non-finite loss NaN at step 7") && reason.0.contains("micro-batch 7"),
        "{reason:?}"
    );
    assert_eq!(reason.1, Some(6));
    assert_eq!(steps(&events, "ok-run"), (1..=10).collect::<Vec<_>>());
    let logged = read_events(&dir.path().join("s/nan-run/metrics.jsonl")).unwrap();
    assert!(matches!(
        logged.last().map(|e| &e.event),
        Some(RunEvent::RunFailed { .. })
    ));
}

#[test]
fn pause_resume_and_stop_after_checkpoint_leave_a_resumable_run() {
    let _process = side_by_side();
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path(), 400);
    let handle = spawn(
        dir.path(),
        vec![job("a", &data, 1), job("b", &data, 1)],
        RunnerOptions::default(),
    );
    let mut seen = Vec::new();
    handle.send(RunnerCommand::Pause);
    for (run, e) in handle.events.iter() {
        let paused = matches!(e, RunEvent::Paused { .. });
        seen.push((run, e));
        if paused {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    assert!(handle.events.try_recv().is_err(), "no step while paused");
    handle.send(RunnerCommand::Resume);
    handle.send(RunnerCommand::StopAfterCheckpoint);
    seen.extend(handle.events.iter());
    let summary = handle.join();
    assert_eq!(summary.interrupted, vec!["a"]);
    assert!(summary.finished.is_empty(), "a stop ends the sweep");
    let last_step = *steps(&seen, "a").last().unwrap();
    assert!(last_step < 400);
    let tail: Vec<_> = seen
        .iter()
        .rev()
        .filter(|(_, e)| !matches!(e, RunEvent::Telemetry(_)))
        .take(2)
        .map(|(_, e)| e.clone())
        .collect();
    assert!(
        matches!(tail[1], RunEvent::CheckpointSaved { step, .. } if step == last_step),
        "{tail:?}"
    );
    assert!(
        matches!(&tail[0], RunEvent::Interrupted { step, .. } if *step == last_step),
        "{tail:?}"
    );

    // A second start resumes at last_step + 1 and runs to the end; cancel is tried on run b.
    let handle = spawn(
        dir.path(),
        vec![job("a", &data, 1), job("b", &data, 1)],
        RunnerOptions::default(),
    );
    let mut again = Vec::new();
    for (run, e) in handle.events.iter() {
        if run == "b" && matches!(e, RunEvent::Step(_)) {
            handle.send(RunnerCommand::Cancel);
        }
        again.push((run, e));
    }
    assert_eq!(
        steps(&again, "a"),
        (last_step + 1..=400).collect::<Vec<_>>()
    );
    // The cancel ends b at its last complete checkpoint (every 5 toy steps), with none written for it: how many
    // steps b ran before the runner read the cancel depends on how busy the machine is.
    let checkpointed = (again.iter().rev())
        .find_map(|(r, e)| match e {
            RunEvent::CheckpointSaved { step, .. } if r == "b" => Some(*step),
            _ => None,
        })
        .unwrap_or(0);
    assert!(again.iter().any(|(r, e)| r == "b"
        && matches!(e, RunEvent::Interrupted { step, reason }
            if reason == "cancelled" && *step == checkpointed)));
    assert_eq!(handle.join().interrupted, vec!["b"]);
}

#[test]
fn a_locked_run_is_left_alone_and_max_steps_stops_with_a_checkpoint() {
    let _process = side_by_side();
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path(), 20);
    let held = RunLock::acquire(&SweepPaths::new(dir.path(), "s").run("a")).unwrap();
    let options = RunnerOptions {
        max_steps: Some(3),
        ..RunnerOptions::default()
    };
    let handle = spawn(
        dir.path(),
        vec![job("a", &data, 1), job("b", &data, 1), job("c", &data, 1)],
        options,
    );
    let events: Vec<_> = handle.events.iter().collect();
    let summary = handle.join();
    assert_eq!(summary.skipped, vec!["a"]);
    assert_eq!(
        summary.interrupted,
        vec!["b", "c"],
        "max_steps does not stop the sweep"
    );
    assert!(events.iter().all(|(r, _)| r != "a"));
    assert!(
        !dir.path().join("s/a/metrics.jsonl").exists(),
        "nothing written into a locked run"
    );
    assert_eq!(steps(&events, "b"), vec![1, 2, 3]);
    assert!(
        dir.path()
            .join("s/b/checkpoints/step-00000003/trainer_state.json")
            .exists()
    );
    drop(held);
}

#[test]
fn memory_stays_flat_over_300_steps() {
    let _process = alone();
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path(), 320);
    let mut j = job("long", &data, 1);
    j.train.checkpoint_every = 50;
    let handle = spawn(dir.path(), vec![j], RunnerOptions::default());
    let stop = handle.stop_flag();
    let rss: Vec<f64> = handle
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            RunEvent::Step(m) => Some(m.rss_mib),
            _ => None,
        })
        .collect();
    assert!(!stop.load(Ordering::SeqCst));
    assert_eq!(rss.len(), 320);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let early = mean(&rss[50..100]);
    let late = mean(&rss[270..320]);
    let per_step_kib = (late - early) / 220.0 * 1024.0;
    assert!(
        per_step_kib < 4.0,
        "RSS grew from {early:.1} to {late:.1} MiB ({per_step_kib:.2} KiB per step)"
    );
    handle.join();
}
