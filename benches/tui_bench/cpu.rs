//! CPU use of the real dashboard in tmux over 60 s: on a finished sweep (idle), and while it follows a run
//! that another process (this benchmark, holding the run's lock) is training at 20 steps/s.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use qlab::store::atomic::append_line_synced;
use qlab::store::{RunLock, SweepPaths};
use qlab::sweep::events::{LoggedEvent, RunEvent, StepMetrics};

const MEASURE: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(5);

/// The two-task sweep the dashboard runs on, and its name.
const CONFIG: &str = include_str!("../../tests/fixtures/two-task-sweep.toml");
const SWEEP: &str = "two-tasks";

pub fn idle() {
    let Some(dir) = fixture() else { return };
    let ids = run_ids(&dir);
    for id in &ids {
        write_finished_run(&dir, id, 2000);
    }
    let cpu = measure_in_tmux(&dir, &[]);
    println!(
        "idle on a finished sweep ({} runs): {cpu:.3}% of a core over {}s",
        ids.len(),
        MEASURE.as_secs()
    );
}

pub fn follow() {
    let Some(dir) = fixture() else { return };
    let ids = run_ids(&dir);
    write_finished_run(&dir, &ids[1], 2000);
    let run = SweepPaths::new(&dir.join("runs"), SWEEP).run(&ids[0]);
    let lock = RunLock::acquire(&run).expect("take the run lock");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, metrics, id) = (stop.clone(), run.metrics(), ids[0].clone());
        std::thread::spawn(move || {
            let total = 1_000_000;
            log(
                &metrics,
                &id,
                RunEvent::RunStarted {
                    total_steps: total,
                    start_step: 0,
                    device: "cpu".into(),
                    pid: std::process::id(),
                },
            );
            let mut s = 0;
            while !stop.load(Ordering::Relaxed) {
                s += 1;
                log(&metrics, &id, step(s));
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // Open the followed run's screen so its charts redraw on every step.
    let cpu = measure_in_tmux(&dir, &["Enter"]);
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    drop(lock);
    println!(
        "following a run at 20 steps/s (Run screen open): {cpu:.3}% of a core over {}s",
        MEASURE.as_secs()
    );
}

fn fixture() -> Option<PathBuf> {
    if Command::new("tmux").arg("-V").output().is_err() {
        println!("cpu bench skipped: tmux is not installed");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("qlab-tui-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the bench dir");
    std::fs::write(dir.join("experiments.toml"), CONFIG).expect("write the config");
    Some(dir)
}

fn run_ids(dir: &Path) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_qlab"))
        .args(["plan", "--json"])
        .arg(dir.join("experiments.toml"))
        .output()
        .expect("run qlab plan");
    assert!(
        out.status.success(),
        "qlab plan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("plan JSON");
    runs.iter()
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect()
}

fn step(s: u64) -> RunEvent {
    let x = s as f64;
    RunEvent::Step(StepMetrics {
        step: s,
        epoch: x / 100.0,
        loss: 2.0 / (1.0 + x / 300.0),
        lr: 2e-4,
        grad_norm: 1.0,
        tokens_per_s: 900.0,
        step_s: 0.05,
        rss_mib: 500.0,
    })
}

fn log(metrics: &Path, run: &str, event: RunEvent) {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let line = serde_json::to_string(&LoggedEvent {
        ts,
        run: run.into(),
        event,
    })
    .expect("serialize");
    append_line_synced(metrics, &line).expect("append to metrics.jsonl");
}

fn write_finished_run(dir: &Path, id: &str, steps: u64) {
    let metrics = SweepPaths::new(&dir.join("runs"), SWEEP).run(id).metrics();
    let mut text = String::new();
    let mut push = |ts: f64, event: RunEvent| {
        text.push_str(
            &serde_json::to_string(&LoggedEvent {
                ts,
                run: id.into(),
                event,
            })
            .expect("serialize"),
        );
        text.push('\n');
    };
    push(
        0.0,
        RunEvent::RunStarted {
            total_steps: steps,
            start_step: 0,
            device: "cpu".into(),
            pid: 1,
        },
    );
    for s in 1..=steps {
        push(s as f64, step(s));
    }
    push(
        steps as f64,
        RunEvent::RunFinished {
            step: steps,
            secs: steps as f64,
        },
    );
    std::fs::create_dir_all(metrics.parent().expect("run dir")).expect("create run dir");
    std::fs::write(&metrics, text).expect("write metrics.jsonl");
}

/// Start `qlab tui` in a detached tmux session, send `keys`, and return its CPU use in percent of a core.
fn measure_in_tmux(dir: &Path, keys: &[&str]) -> f64 {
    let session = format!("qlab-bench-{}", std::process::id());
    let cmd = format!(
        "cd {} && exec {} tui experiments.toml",
        dir.display(),
        env!("CARGO_BIN_EXE_qlab")
    );
    let ok = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "120",
            "-y",
            "40",
            &cmd,
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "tmux new-session failed");
    std::thread::sleep(Duration::from_secs(2));
    for k in keys {
        let _ = Command::new("tmux")
            .args(["send-keys", "-t", &session, k])
            .status();
    }
    let pid_out = Command::new("tmux")
        .args(["display", "-p", "-t", &session, "#{pane_pid}"])
        .output()
        .expect("tmux display");
    let pid: u32 = String::from_utf8_lossy(&pid_out.stdout)
        .trim()
        .parse()
        .expect("pane pid");
    std::thread::sleep(SETTLE);
    let before = cpu_ticks(pid);
    std::thread::sleep(MEASURE);
    let after = cpu_ticks(pid);
    let _ = Command::new("tmux")
        .args(["send-keys", "-t", &session, "q"])
        .status();
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("tmux")
        .args(["kill-session", "-t", &session])
        .stderr(std::process::Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(dir);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (after - before) as f64 / hz / MEASURE.as_secs_f64() * 100.0
}

/// User + system CPU ticks of a process, from /proc/PID/stat.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    let after_name = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the name and state.
    fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0)
}
