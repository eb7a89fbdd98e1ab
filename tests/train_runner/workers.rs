//! Several devices: worker threads train runs in parallel (shown with rendezvous points, not timing), with
//! the adapters of a sequential sweep, commands reaching every worker and a failure on one leaving the
//! others alone.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use qlab::config::DeviceSpec;
use qlab::store::SweepPaths;
use qlab::sweep::events::{RunEvent, RunnerCommand, StepMetrics};
use qlab::sweep::job::{LoadError, LoadedModel, ModelLoader, RunJob};
use qlab::sweep::runner::{Runner, RunnerHandle, RunnerOptions};
use qlab::train::TrainError;

use super::{job, steps, toy, write_data};

/// Threads meeting at named points: `meet` returns once `parties` threads have arrived at `point` (an error
/// after a generous while, so that a runner without parallel workers fails the test instead of hanging).
#[derive(Default)]
pub struct Rendezvous {
    arrived: Mutex<HashMap<String, usize>>,
    changed: Condvar,
}

impl Rendezvous {
    pub fn meet(&self, point: &str, parties: usize) -> Result<(), String> {
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
    fn load(&self, job: &RunJob) -> Result<LoadedModel, LoadError> {
        let thread = std::thread::current().name().unwrap_or("").to_string();
        self.loads
            .lock()
            .unwrap()
            .push((job.run_id.clone(), thread, job.device.to_string()));
        if let Some(n) = self.parties {
            self.gate.meet("load", n).map_err(|m| LoadError::Build {
                model: job.model.clone(),
                source: Box::new(TrainError::State(m)),
            })?;
        }
        toy(job, self.parties.map(|n| (self.gate.clone(), n)))
    }
}

fn spawn_workers(
    root: &Path,
    jobs: Vec<RunJob>,
    devices: &[&str],
    loader: Arc<WorkerLoader>,
) -> RunnerHandle {
    let options = RunnerOptions {
        devices: devices
            .iter()
            .map(|d| DeviceSpec::try_from(d.to_string()).unwrap())
            .collect(),
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
    let _process = super::side_by_side();
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
    let _process = super::side_by_side();
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path(), 400);
    let loader = Arc::new(WorkerLoader {
        parties: Some(2),
        ..WorkerLoader::default()
    });
    let jobs = vec![job("a", &data, 1), job("b", &data, 1), job("c", &data, 1)];
    let handle = spawn_workers(dir.path(), jobs, &["cpu", "cpu"], loader);
    let mut seen = Vec::new();
    let mut stepped = HashSet::new();
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
    let mut paused = HashSet::new();
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
    let _process = super::side_by_side();
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
    let _process = super::side_by_side();
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path(), 4);
    let mut j = job("a", &data, 1);
    j.device = DeviceSpec::Cuda(7);
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
    assert_eq!(spec.device, DeviceSpec::Cpu);
}
