//! The runner thread: commands (pause, resume, stop after checkpoint, cancel), a non-finite loss failing one
//! run while the sweep goes on, the per-run lock, `max_steps`, and memory that stays flat over 300 steps.
//! Several devices: workers train runs in parallel (shown with rendezvous, not timing), with the adapters of
//! a sequential run, commands reaching every worker and a failure on one leaving the other alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use candle_core::{Device, Tensor, Var};
use qlab::store::RunLock;
use qlab::store::SweepPaths;
use qlab::sweep::events::{RunEvent, RunnerCommand, StepMetrics};
use qlab::sweep::job::{LoadedModel, ModelLoader, RunJob};
use qlab::sweep::metrics_log::read_events;
use qlab::sweep::runner::{Runner, RunnerHandle, RunnerOptions};
use qlab::train::TrainError;
use qlab::train::model::{Batch, TrainableModel};
use qlab::train::settings::{DatasetSpec, OnBadRow, ScheduleKind, TrainOn, TrainSettings, Warmup};
use qlab::train::toy::{ByteEncoder, ToyConfig, ToyModel};

/// The toy model, returning a NaN loss on the `nan_at`-th call when set.
struct Toy {
    inner: ToyModel,
    calls: std::cell::Cell<usize>,
    nan_at: Option<usize>,
    /// Where the second micro-batch waits until `parties` runs reached theirs.
    gate: Option<(Arc<Rendezvous>, usize)>,
}

/// Threads meeting at named points: `meet` returns once `parties` threads have arrived at `point` (an error
/// after a generous while, so that a runner without parallel workers fails the test instead of hanging).
#[derive(Default)]
struct Rendezvous {
    arrived: Mutex<HashMap<String, usize>>,
    changed: Condvar,
}

impl Rendezvous {
    fn meet(&self, point: &str, parties: usize) -> Result<(), String> {
        let mut arrived = self.arrived.lock().unwrap();
        *arrived.entry(point.to_string()).or_default() += 1;
        self.changed.notify_all();
        let (arrived, wait) = self
            .changed
            .wait_timeout_while(arrived, Duration::from_secs(60), |a| a[point] < parties)
            .unwrap();
        if wait.timed_out() {
            return Err(format!(
                "only {} of {parties} runs reached {point} together",
                arrived[point]
            ));
        }
        Ok(())
    }
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
    fn load(&self, job: &RunJob) -> Result<LoadedModel, String> {
        toy(job, None)
    }
}

/// The toy loader for parallel workers: records which thread loaded each run on which device, and with
/// `parties` waits until that many runs are loading at once (then again at their second micro-batch).
#[derive(Default)]
struct WorkerLoader {
    parties: Option<usize>,
    gate: Arc<Rendezvous>,
    /// (run, thread name, job device) per load.
    loads: Mutex<Vec<(String, String, String)>>,
}

impl ModelLoader for WorkerLoader {
    fn load(&self, job: &RunJob) -> Result<LoadedModel, String> {
        let thread = std::thread::current().name().unwrap_or("").to_string();
        self.loads
            .lock()
            .unwrap()
            .push((job.run_id.clone(), thread, job.device.clone()));
        if let Some(n) = self.parties {
            self.gate.meet("load", n)?;
        }
        toy(job, self.parties.map(|n| (self.gate.clone(), n)))
    }
}

fn toy(job: &RunJob, gate: Option<(Arc<Rendezvous>, usize)>) -> Result<LoadedModel, String> {
    let inner = ToyModel::new(ToyConfig {
        vocab: 257,
        hidden: 48,
        rank: 4,
        seed: 5,
    })
    .map_err(|e| e.to_string())?;
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
    let path = dir.join("d.csv");
    let mut text = String::from("instruction,output\n");
    for i in 0..rows {
        text.push_str(&format!("name the number {i},it is {}\n", i * 3));
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn job(id: &str, data: &Path, epochs: u32) -> RunJob {
    RunJob {
        run_id: id.into(),
        model: "toy".into(),
        device: "cpu".into(),
        data: DatasetSpec {
            path: data.to_owned(),
            format: None,
            limit: None,
            template: "### Instruction:\n{instruction}\n### Response:\n{output}".into(),
            completion_marker: Some("### Response:\n".into()),
            fields: Default::default(),
            train_on: TrainOn::Completion,
            on_bad_row: OnBadRow::Error,
        },
        train: TrainSettings {
            epochs,
            batch_size: 1,
            grad_accum: 1,
            lr: 0.01,
            weight_decay: 0.0,
            max_grad_norm: None,
            schedule: ScheduleKind::Linear,
            warmup: Warmup::Steps(2),
            max_seq_len: 64,
            packing: false,
            seed: 1,
            checkpoint_every: 5,
            keep_checkpoints: 1,
            eval_at_epochs: vec![],
        },
    }
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
    assert!(again.iter().any(|(r, e)| r == "b"
        && matches!(e, RunEvent::Interrupted { step: 0, reason } if reason == "cancelled")));
    assert_eq!(handle.join().interrupted, vec!["b"]);
}

#[test]
fn a_locked_run_is_left_alone_and_max_steps_stops_with_a_checkpoint() {
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

fn spawn_workers(
    root: &Path,
    jobs: Vec<RunJob>,
    devices: &[&str],
    loader: Arc<WorkerLoader>,
) -> RunnerHandle {
    let options = RunnerOptions {
        devices: devices.iter().map(|d| d.to_string()).collect(),
        // No telemetry event between the ones the tests wait for.
        telemetry_every: Duration::from_secs(3600),
        ..RunnerOptions::default()
    };
    Runner::spawn(SweepPaths::new(root, "s"), jobs, loader, options).unwrap()
}

fn position(events: &[(String, RunEvent)], pred: impl Fn(&str, &RunEvent) -> bool) -> usize {
    events
        .iter()
        .position(|(r, e)| pred(r, e))
        .expect("event not found")
}

/// Every `.safetensors` file of the run's newest checkpoint, by name.
fn final_tensors(root: &Path, run: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let checkpoints = root.join("s").join(run).join("checkpoints");
    let mut steps: Vec<PathBuf> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    steps.sort();
    let newest = steps.pop().unwrap();
    let mut files = Vec::new();
    let mut dirs = vec![newest.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "safetensors") {
                let bytes = std::fs::read(&path).unwrap();
                files.push((path.strip_prefix(&newest).unwrap().to_owned(), bytes));
            }
        }
    }
    files.sort();
    assert!(!files.is_empty(), "no tensors in {}", newest.display());
    files
}

#[test]
fn two_cpu_workers_train_two_runs_at_once_with_the_adapters_of_a_sequential_sweep() {
    let jobs = |data: &Path| {
        let mut b = job("b", data, 1);
        b.train.seed = 2;
        vec![job("a", data, 1), b]
    };
    let sequential = tempfile::tempdir().unwrap();
    let data = write_data(sequential.path(), 10);
    let loader = Arc::new(WorkerLoader::default());
    let handle = spawn_workers(sequential.path(), jobs(&data), &["cpu"], loader.clone());
    let _: Vec<_> = handle.events.iter().collect();
    assert_eq!(handle.join().finished, ["a", "b"]);
    let one: Vec<String> = loader
        .loads
        .lock()
        .unwrap()
        .iter()
        .map(|l| l.1.clone())
        .collect();
    assert_eq!(one, ["qlab-runner", "qlab-runner"]);

    let parallel = tempfile::tempdir().unwrap();
    let data = write_data(parallel.path(), 10);
    let loader = Arc::new(WorkerLoader {
        parties: Some(2),
        ..WorkerLoader::default()
    });
    let handle = spawn_workers(
        parallel.path(),
        jobs(&data),
        &["cpu", "cpu"],
        loader.clone(),
    );
    let events: Vec<_> = handle.events.iter().collect();
    let summary = handle.join();
    assert_eq!(
        (summary.finished, summary.failed),
        (vec!["a".to_string(), "b".to_string()], vec![])
    );
    for (run, other) in [("a", "b"), ("b", "a")] {
        let first_step = position(&events, |r, e| r == other && matches!(e, RunEvent::Step(_)));
        let finished = position(&events, |r, e| {
            r == run && matches!(e, RunEvent::RunFinished { .. })
        });
        assert!(
            first_step < finished,
            "{other} stepped only after {run} finished"
        );
        assert_eq!(steps(&events, run), (1..=10).collect::<Vec<_>>());
    }
    let mut threads: Vec<String> = loader
        .loads
        .lock()
        .unwrap()
        .iter()
        .map(|l| l.1.clone())
        .collect();
    threads.sort();
    assert_eq!(threads, ["qlab-runner-cpu0", "qlab-runner-cpu1"]);
    for run in ["a", "b"] {
        assert_eq!(
            final_tensors(parallel.path(), run),
            final_tensors(sequential.path(), run),
            "run {run}: parallel and sequential adapters differ"
        );
    }
    assert_ne!(
        final_tensors(parallel.path(), "a"),
        final_tensors(parallel.path(), "b")
    );
}

#[test]
fn a_command_reaches_every_worker_and_a_stop_leaves_the_rest_of_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path(), 400);
    let loader = Arc::new(WorkerLoader {
        parties: Some(2),
        ..WorkerLoader::default()
    });
    let jobs = vec![job("a", &data, 1), job("b", &data, 1), job("c", &data, 1)];
    let handle = spawn_workers(dir.path(), jobs, &["cpu", "cpu"], loader);
    let mut seen = Vec::new();
    let mut stepped = std::collections::HashSet::new();
    // Past the rendezvous of the second micro-batch, where a paused run would hold the other one up.
    for (run, e) in handle.events.iter() {
        if matches!(e, RunEvent::Step(StepMetrics { step: 2.., .. })) {
            stepped.insert(run.clone());
        }
        seen.push((run, e));
        if stepped.len() == 2 {
            break;
        }
    }
    assert!(handle.send(RunnerCommand::Pause));
    let mut paused = std::collections::HashSet::new();
    for (run, e) in handle.events.iter() {
        if matches!(e, RunEvent::Paused { .. }) {
            paused.insert(run.clone());
        }
        seen.push((run, e));
        if paused.len() == 2 {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(handle.events.try_recv().is_err(), "no step while paused");
    handle.send(RunnerCommand::Resume);
    handle.send(RunnerCommand::StopAfterCheckpoint);
    seen.extend(handle.events.iter());
    let summary = handle.join();
    assert_eq!(summary.interrupted, ["a", "b"]);
    assert!(summary.finished.is_empty() && summary.skipped.is_empty());
    for run in ["a", "b"] {
        let resumed = seen
            .iter()
            .filter(|(r, e)| r == run && matches!(e, RunEvent::Resumed { .. }))
            .count();
        assert_eq!(resumed, 1, "run {run}");
        assert!(
            seen.iter()
                .any(|(r, e)| r == run && matches!(e, RunEvent::Interrupted { .. }))
        );
    }
    assert!(
        seen.iter().all(|(r, _)| r != "c"),
        "no worker takes a job after a stop"
    );
    assert!(!dir.path().join("s/c").exists());
}

#[test]
fn a_failing_run_on_one_worker_leaves_the_other_training_and_the_queue_going() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path(), 10);
    let loader = Arc::new(WorkerLoader {
        parties: Some(2),
        ..WorkerLoader::default()
    });
    let jobs = vec![
        job("nan-run", &data, 1),
        job("ok-run", &data, 1),
        job("ok-2", &data, 1),
    ];
    let handle = spawn_workers(dir.path(), jobs, &["cpu", "cpu"], loader.clone());
    let events: Vec<_> = handle.events.iter().collect();
    let summary = handle.join();
    assert_eq!(summary.failed, ["nan-run"]);
    assert_eq!(summary.finished, ["ok-run", "ok-2"]);
    for run in ["ok-run", "ok-2"] {
        assert_eq!(steps(&events, run), (1..=10).collect::<Vec<_>>());
    }
    let failed = position(&events, |r, e| {
        r == "nan-run" && matches!(e, RunEvent::RunFailed { .. })
    });
    let ok_first = position(&events, |r, e| {
        r == "ok-run" && matches!(e, RunEvent::Step(_))
    });
    assert!(ok_first < failed, "ok-run was training when nan-run failed");
    assert_eq!(loader.loads.lock().unwrap().len(), 3);
}

#[test]
fn a_worker_trains_each_job_on_its_own_device_and_the_spec_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path(), 4);
    let mut j = job("a", &data, 1);
    j.device = "cuda:7".into();
    let loader = Arc::new(WorkerLoader::default());
    let handle = spawn_workers(dir.path(), vec![j], &["cpu"], loader.clone());
    let events: Vec<_> = handle.events.iter().collect();
    assert_eq!(handle.join().finished, ["a"]);
    assert_eq!(
        loader.loads.lock().unwrap()[0],
        ("a".into(), "qlab-runner".into(), "cpu".into())
    );
    assert!(
        events
            .iter()
            .any(|(_, e)| matches!(e, RunEvent::RunStarted { device, .. } if device == "cpu"))
    );
    let spec: RunJob =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("s/a/spec.json")).unwrap())
            .unwrap();
    assert_eq!(spec.device, "cpu");
}
