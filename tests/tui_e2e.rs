//! End-to-end: the real `qlab` binary driven in tmux (send-keys, capture-pane). Skipped, with a message,
//! only when tmux is not installed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Tmux, rating_sweep};
use qlab::config::Config;
use qlab::rating::journal::{self, Entry};
use qlab::store::atomic::append_line_synced;
use qlab::store::{RunLock, SweepPaths};
use qlab::sweep::events::{LoggedEvent, RunEvent, StepMetrics};

/// The two-task sweep the dashboard runs on.
const CONFIG: &str = include_str!("fixtures/two-task-sweep.toml");

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
    let cfg = Config::load(&config).unwrap();
    let run = SweepPaths::new(&cfg.runs_dir(), &cfg.sweep.name).run(&ids[0]);
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
    let tmux = Tmux::start("attach", &dashboard_cmd(dir.path()), (100, 30));
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
    expect_clean_exit(&tmux, "quit", Duration::from_secs(30));
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
        let tmux = Tmux::start(&format!("sig{signal}"), &cmd, (100, 30));
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
        expect_clean_exit(&tmux, &format!("SIG{signal}"), Duration::from_secs(30));
    }
}

/// A tiny Llama (the model fixtures' random 2-layer decoder) with a character tokenizer, a dataset of
/// a few hundred rows and a config that trains for a few minutes on a CPU.
fn training_fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), model.join(f)).unwrap();
    }
    let mut vocab = serde_json::Map::new();
    for t in ["<pad>", "<s>", "</s>", "<unk>"] {
        vocab.insert(t.into(), vocab.len().into());
    }
    for c in (32u8..127).map(char::from).chain(['\n']) {
        vocab.insert(c.to_string(), vocab.len().into());
    }
    let special = |id: usize, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": true})
    };
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<pad>"), special(1, "<s>"), special(2, "</s>"), special(3, "<unk>")],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": []}
    });
    std::fs::write(model.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(
        model.join("tokenizer_config.json"),
        r#"{"bos_token": "<s>", "eos_token": "</s>"}"#,
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let rows: String = (0..400)
        .map(|i| format!("{{\"question\": \"{i}+1?\", \"answer\": \"{}\"}}\n", i + 1))
        .collect();
    std::fs::write(dir.path().join("data/arith.jsonl"), rows).unwrap();
    let config = dir.path().join("experiments.toml");
    std::fs::write(
        &config,
        r#"
[sweep]
name = "e2e"
device = "cpu"

[[model]]
id = "tiny"
path = "model"
quant = "none"

[[dataset]]
id = "arith"
path = "data/arith.jsonl"
template = "Q: {question}\n### Response:\n{answer}"

[train]
epochs = 50
batch_size = 1
max_seq_len = 48
checkpoint_every = 10
eval_at_epochs = []

[matrix]
models = ["tiny"]
datasets = ["arith"]
"#,
    )
    .unwrap();
    (dir, config)
}

/// Stops the background runner at the test's end (or a failed test's), and waits until it has
/// checkpointed and exited: declared after the fixture, it drops first, so the runner never writes into a
/// deleted directory.
struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let Some(pid) = self.0 else { return };
        let pid = pid.to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let alive = || {
            Command::new("kill")
                .args(["-0", &pid])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let start = Instant::now();
        while alive() && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Open a tiny config, start training with one key, watch the loss chart grow, hand the run over to a
/// detached `qlab run`, re-open and see the same run still training (read-only), quit; the terminal is
/// restored each time.
#[test]
fn train_detach_and_reattach() {
    if !Tmux::available() {
        eprintln!(
            "SKIPPED: tmux is not installed (the end-to-end dashboard test drives the binary in tmux)"
        );
        return;
    }
    let (dir, config) = training_fixture();
    let ids = run_ids(&config);
    let run = SweepPaths::new(&dir.path().join("runs"), "e2e").run(&ids[0]);
    let tmux = Tmux::start("train", &dashboard_cmd(dir.path()), (100, 30));
    tmux.wait_for("the sweep", Duration::from_secs(60), |s| {
        s.contains("queued")
    });
    tmux.send("s");
    tmux.wait_for("training to start", Duration::from_secs(120), |s| {
        s.contains("training") && s.contains("loss")
    });
    tmux.send("Enter");
    let first = tmux.wait_for("the Run screen with steps", Duration::from_secs(120), |s| {
        s.contains("smoothed") && shown_step(s).is_some_and(|n| n >= 3)
    });
    let first_step = shown_step(&first).unwrap();
    tmux.wait_for("the loss chart to grow", Duration::from_secs(120), |s| {
        shown_step(s).is_some_and(|n| n >= first_step + 5)
    });
    tmux.send("q");
    tmux.wait_for("the quit dialog", Duration::from_secs(10), |s| {
        s.contains("quit while training")
    });
    tmux.send("b");
    expect_clean_exit(
        &tmux,
        "hand-over to the background",
        Duration::from_secs(120),
    );
    drop(tmux);

    let start = Instant::now();
    let background = loop {
        if let Some(pid) = qlab::store::lock::holder(&run) {
            break pid;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no background runner took the run's lock"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let _cleanup = KillOnDrop(Some(background));
    let tmux = Tmux::start("reattach", &dashboard_cmd(dir.path()), (100, 30));
    let owner = format!("pid {background}");
    tmux.wait_for(
        "the run still training in the background",
        Duration::from_secs(60),
        |s| s.contains("training") && s.contains(&owner),
    );
    tmux.send("s");
    tmux.wait_for(
        "start to refuse the locked run",
        Duration::from_secs(10),
        |s| s.contains("shown read-only"),
    );
    tmux.send("Enter");
    let seen = tmux.wait_for("the followed Run screen", Duration::from_secs(60), |s| {
        s.contains("read-only") && shown_step(s).is_some()
    });
    let step = shown_step(&seen).unwrap();
    tmux.wait_for(
        "the followed run to advance",
        Duration::from_secs(120),
        |s| shown_step(s).is_some_and(|n| n > step),
    );
    tmux.send("q");
    expect_clean_exit(&tmux, "quit", Duration::from_secs(30));
}

/// A run whose model code panics (injected with QLAB_TEST_PANIC_IN_RUN) fails with the panic's message on
/// the dashboard; the sweep goes on to the next run, which trains to the end; the dashboard stays up and
/// quitting gives the terminal back.
#[test]
fn a_panic_in_a_run_fails_that_run_and_the_dashboard_stays_up() {
    if !Tmux::available() {
        eprintln!(
            "SKIPPED: tmux is not installed (the end-to-end dashboard test drives the binary in tmux)"
        );
        return;
    }
    let (dir, config) = training_fixture();
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text
        .replace("epochs = 50", "epochs = 1")
        .replace(
            "[train]",
            "[[dataset]]\nid = \"again\"\npath = \"data/arith.jsonl\"\nlimit = 40\n\
             template = \"Q: {question}\\n### Response:\\n{answer}\"\n\n[train]",
        )
        .replace(
            "datasets = [\"arith\"]",
            "datasets = [\"arith\", \"again\"]",
        );
    std::fs::write(&config, text).unwrap();
    let ids = run_ids(&config);
    assert_eq!(ids.len(), 2, "{ids:?}");
    let cmd = dashboard_cmd(dir.path()).replacen(
        " && ",
        &format!(" && QLAB_TEST_PANIC_IN_RUN={} ", ids[0]),
        1,
    );
    let tmux = Tmux::start("panic", &cmd, (120, 30));
    tmux.wait_for("the sweep", Duration::from_secs(60), |s| {
        s.contains("queued")
    });
    tmux.send("s");
    let screen = tmux.wait_for(
        "the panicked run failed, the next one done",
        Duration::from_secs(240),
        |s| s.contains("failed") && s.contains("1/2 runs done"),
    );
    assert!(
        !screen.contains("EXITED"),
        "the dashboard is still up: {screen}"
    );
    let status = std::fs::read_to_string(
        SweepPaths::new(&dir.path().join("runs"), "e2e")
            .run(&ids[0])
            .status(),
    )
    .unwrap();
    assert!(
        status.contains("injected by QLAB_TEST_PANIC_IN_RUN"),
        "{status}"
    );
    tmux.send("q");
    // The next run may still be answering its questions: then the quit dialog asks first.
    let seen = tmux.wait_for(
        "the exit or the quit dialog",
        Duration::from_secs(30),
        |s| s.contains("EXITED") || s.contains("stop & quit"),
    );
    if seen.contains("stop & quit") {
        tmux.send("s");
    }
    expect_clean_exit(&tmux, "quit after a panicked run", Duration::from_secs(120));
}

/// Rate one item on the dashboard's Rating screen with the keyboard, SIGKILL the dashboard, open it again:
/// the judgement is in the journal and on the screen, and the results count it.
#[test]
fn a_rating_made_on_the_dashboard_survives_sigkill() {
    if !Tmux::available() {
        eprintln!(
            "SKIPPED: tmux is not installed (the end-to-end dashboard test drives the binary in tmux)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = rating_sweep(dir.path());
    let cmd = format!(
        "cd '{}' && sh -c 'echo $$ > qlab.pid; exec {} tui rate.toml --rater tester'; echo \"EXITED $?\"; sleep 60",
        dir.path().display(),
        env!("CARGO_BIN_EXE_qlab")
    );
    let tmux = Tmux::start("rate", &cmd, (120, 40));
    tmux.wait_for("the dashboard", Duration::from_secs(60), |s| {
        s.contains("models x datasets")
    });
    tmux.send("a");
    tmux.wait_for("the rating screen", Duration::from_secs(30), |s| {
        s.contains("item 1/2") && s.contains("rater tester")
    });
    tmux.send("4");
    tmux.wait_for("the score saved", Duration::from_secs(30), |s| {
        s.contains("· saved") && s.contains("Correct Answer     4")
    });
    let pid = std::fs::read_to_string(dir.path().join("qlab.pid")).unwrap();
    let killed = Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success());
    tmux.wait_for("the dashboard killed", Duration::from_secs(30), |s| {
        s.contains("EXITED 137")
    });
    drop(tmux);

    let cfg = Config::load(&config).unwrap();
    let path = SweepPaths::new(&cfg.runs_dir(), "rate-test").ratings_journal();
    let lines = journal::read(&path, &qlab::rating::Rubric::default()).unwrap();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0].rater, "tester");
    let Entry::Score { scores, answer, .. } = &lines[0].entry else {
        panic!("{lines:?}")
    };
    assert_eq!(scores.get("Correct Answer"), Some(&4.0));
    assert_eq!(answer.item.question, "1");

    let tmux = Tmux::start("rate-again", &cmd, (120, 40));
    tmux.wait_for("the dashboard again", Duration::from_secs(60), |s| {
        s.contains("models x datasets")
    });
    tmux.send("a");
    let screen = tmux.wait_for("the rating screen again", Duration::from_secs(30), |s| {
        s.contains("item 1/2")
    });
    assert!(
        screen.contains("Correct Answer     4") && screen.contains("rater tester"),
        "{screen}"
    );
    tmux.send("t");
    let results = tmux.wait_for("the results screen", Duration::from_secs(30), |s| {
        s.contains("Results · math")
    });
    assert!(
        results.contains("4.00") && results.contains("n 1"),
        "{results}"
    );
    tmux.send("q");
    let end = tmux.wait_for("the dashboard to exit", Duration::from_secs(30), |s| {
        s.contains("EXITED")
    });
    assert!(end.contains("EXITED 0"), "{end}");
}

/// Wait for the wrapped command to end (the pane shows `EXITED <code>`) and check that it exited with 0 and
/// left the terminal's alternate screen; `context` names the case in failure messages.
fn expect_clean_exit(tmux: &Tmux, context: &str, timeout: Duration) {
    let end = tmux.wait_for("the dashboard to exit", timeout, |s| s.contains("EXITED"));
    assert!(end.contains("EXITED 0"), "{context}: {end}");
    assert_eq!(
        tmux.display("#{alternate_on}"),
        "0",
        "{context}: the terminal left the alternate screen"
    );
}
