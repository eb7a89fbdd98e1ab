//! End-to-end: the real `qlab` binary driven in tmux (send-keys, capture-pane). Skipped, with a message,
//! only when tmux is not installed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use qlab::store::atomic::append_line_synced;
use qlab::store::{RunLock, SweepPaths};
use qlab::sweep::events::{LoggedEvent, RunEvent, StepMetrics};

const CONFIG: &str = r#"
[sweep]
name = "e2e"

[[model]]
id = "tiny"
path = "models/tiny.gguf"
quant = "none"

[[dataset]]
id = "arith"
path = "data/arith.jsonl"
template = "Q: {question}\n### Response:\n{answer}"

[[dataset]]
id = "bio"
path = "data/bio.jsonl"
template = "Q: {question}\n### Response:\n{answer}"

[matrix]
models = ["tiny"]
datasets = ["arith", "bio"]
"#;

/// A tmux session killed on drop.
struct Tmux {
    session: String,
}

impl Tmux {
    fn available() -> bool {
        Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn start(name: &str, cmd: &str) -> Tmux {
        let session = format!("qlab-e2e-{name}-{}", std::process::id());
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &session,
                "-x",
                "100",
                "-y",
                "30",
                cmd,
            ])
            .env("TERM", "xterm-256color")
            .status()
            .unwrap()
            .success();
        assert!(ok, "tmux new-session failed");
        Tmux { session }
    }

    /// Send one key (tmux key name or text); a pause after it keeps Esc from merging with the next key.
    fn send(&self, key: &str) {
        let ok = Command::new("tmux")
            .args(["send-keys", "-t", &self.session, key])
            .status()
            .unwrap();
        assert!(ok.success(), "tmux send-keys {key} failed");
        std::thread::sleep(Duration::from_millis(300));
    }

    fn capture(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn display(&self, format: &str) -> String {
        let out = Command::new("tmux")
            .args(["display", "-p", "-t", &self.session, format])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Poll the pane until `pred` holds (generous timeouts: CI machines are slow).
    fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.capture();
            if pred(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}; the pane shows:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.session])
            .status();
    }
}

fn fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("experiments.toml");
    std::fs::write(&config, CONFIG).unwrap();
    (dir, config)
}

fn run_ids(config: &Path) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_qlab"))
        .args(["plan", "--json"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qlab plan: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    runs.iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

fn log(metrics: &Path, run: &str, event: RunEvent) {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let line = serde_json::to_string(&LoggedEvent {
        ts,
        run: run.into(),
        event,
    })
    .unwrap();
    append_line_synced(metrics, &line).unwrap();
}

/// The step shown on the Run screen's progress line (`step N/TOTAL`).
fn shown_step(screen: &str) -> Option<u64> {
    let at = screen.find(" step ")?;
    let rest = &screen[at + 6..];
    rest[..rest.find('/')?].trim().parse().ok()
}

fn dashboard_cmd(dir: &Path) -> String {
    format!(
        "cd '{}' && {} tui experiments.toml; echo \"EXITED $?\"; sleep 60",
        dir.display(),
        env!("CARGO_BIN_EXE_qlab")
    )
}

/// Another process (this test, holding the run's lock) trains a run: the dashboard follows it live,
/// read-only, its loss chart grows, quitting is immediate, and the terminal is given back.
#[test]
fn a_run_trained_elsewhere_is_followed_live_and_the_terminal_is_restored() {
    if !Tmux::available() {
        eprintln!(
            "SKIPPED: tmux is not installed (the end-to-end dashboard test drives the binary in tmux)"
        );
        return;
    }
    let (dir, config) = fixture();
    let ids = run_ids(&config);
    let run = SweepPaths::new(&dir.path().join("runs"), "e2e").run(&ids[0]);
    let lock = RunLock::acquire(&run).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, metrics, id) = (stop.clone(), run.metrics(), ids[0].clone());
        std::thread::spawn(move || {
            let pid = std::process::id();
            log(
                &metrics,
                &id,
                RunEvent::RunStarted {
                    total_steps: 100_000,
                    start_step: 0,
                    device: "cpu".into(),
                    pid,
                },
            );
            let mut s = 0u64;
            while !stop.load(Ordering::Relaxed) {
                s += 1;
                let x = s as f64;
                let m = StepMetrics {
                    step: s,
                    epoch: x / 1000.0,
                    loss: 3.0 / (1.0 + x / 50.0),
                    lr: 2e-4,
                    grad_norm: 1.0,
                    tokens_per_s: 800.0,
                    step_s: 0.1,
                    rss_mib: 400.0,
                };
                log(&metrics, &id, RunEvent::Step(m));
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let tmux = Tmux::start("attach", &dashboard_cmd(dir.path()));
    let me = format!("pid {}", std::process::id());
    tmux.wait_for(
        "the matrix with the run trained elsewhere",
        Duration::from_secs(60),
        |s| s.contains("training") && s.contains(&me),
    );
    assert_eq!(
        tmux.display("#{alternate_on}"),
        "1",
        "the dashboard draws on the alternate screen"
    );
    tmux.send("Enter");
    let first = tmux.wait_for("the Run screen", Duration::from_secs(30), |s| {
        s.contains("read-only") && shown_step(s).is_some()
    });
    let first_step = shown_step(&first).unwrap();
    let later = tmux.wait_for("the chart to grow", Duration::from_secs(30), |s| {
        shown_step(s).is_some_and(|n| n >= first_step + 10)
    });
    assert!(later.contains("loss"), "{later}");
    tmux.send("Escape");
    tmux.wait_for("the Sweep screen again", Duration::from_secs(10), |s| {
        s.contains("models x datasets")
    });
    tmux.send("q");
    let end = tmux.wait_for("the dashboard to exit", Duration::from_secs(30), |s| {
        s.contains("EXITED")
    });
    assert!(end.contains("EXITED 0"), "{end}");
    assert_eq!(
        tmux.display("#{alternate_on}"),
        "0",
        "the terminal left the alternate screen"
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    drop(lock);
}

/// SIGTERM and SIGHUP end an idle dashboard cleanly: exit status 0 and the terminal given back.
#[test]
fn termination_signals_restore_the_terminal() {
    if !Tmux::available() {
        eprintln!(
            "SKIPPED: tmux is not installed (the end-to-end dashboard test drives the binary in tmux)"
        );
        return;
    }
    for signal in ["TERM", "HUP"] {
        let (dir, _config) = fixture();
        let cmd = format!(
            "cd '{}' && sh -c 'echo $$ > qlab.pid; exec {} tui experiments.toml'; echo \"EXITED $?\"; sleep 60",
            dir.path().display(),
            env!("CARGO_BIN_EXE_qlab")
        );
        let tmux = Tmux::start(&format!("sig{signal}"), &cmd);
        tmux.wait_for("the dashboard", Duration::from_secs(60), |s| {
            s.contains("models x datasets")
        });
        assert_eq!(tmux.display("#{alternate_on}"), "1");
        let pid = std::fs::read_to_string(dir.path().join("qlab.pid")).unwrap();
        let killed = Command::new("kill")
            .args([&format!("-{signal}"), pid.trim()])
            .status()
            .unwrap();
        assert!(killed.success());
        let end = tmux.wait_for("the dashboard to exit", Duration::from_secs(30), |s| {
            s.contains("EXITED")
        });
        assert!(end.contains("EXITED 0"), "SIG{signal}: {end}");
        assert_eq!(
            tmux.display("#{alternate_on}"),
            "0",
            "SIG{signal}: the terminal left the alternate screen"
        );
    }
}
