//! `qlab run` end to end on a tiny Llama (the model fixture) with a word-level tokenizer: `--max-steps` stops
//! with a checkpoint and a second run resumes and finishes; a third skips the finished run; SIGTERM
//! checkpoints and exits cleanly, and the next run continues from that checkpoint.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qlab::store::atomic::read_json;
#[allow(dead_code)] // this binary uses only the test tokenizer of `common`
mod common;

use common::tiny_word_model;
use qlab::store::{RunState, RunStatus};
use qlab::sweep::events::RunEvent;
use qlab::sweep::metrics_log::read_events;

/// A sweep of one run: the tiny Llama fixture on `rows` sums, batch 2, checkpoint every 2 steps.
fn setup(dir: &Path, rows: usize) {
    tiny_word_model(dir);
    let data: Vec<String> = (0..rows)
        .map(|i| serde_json::json!({"q": format!("{} plus {}", i % 9, i % 7), "a": format!("{}", i % 9 + i % 7)}).to_string())
        .collect();
    std::fs::write(dir.join("sums.jsonl"), data.join("\n")).unwrap();
    let config = r#"
[sweep]
name = "t"
device = "cpu"
[[model]]
id = "tiny"
path = "model"
quant = "none"
[[dataset]]
id = "sums"
path = "sums.jsonl"
template = "Q : {q} A : {a}"
completion_marker = "A : "
[lora]
r = 4
alpha = 8
[train]
lr = 1e-2
batch_size = 2
grad_accum = 1
max_seq_len = 32
epochs = 1
eval_at_epochs = [1]
checkpoint_every = 2
[matrix]
models = ["tiny"]
datasets = ["sums"]
"#;
    std::fs::write(dir.join("t.toml"), config).unwrap();
}

fn qlab(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qlab"));
    c.current_dir(dir)
        .arg("run")
        .arg("t.toml")
        .args(args)
        .env("QLAB_OFFLINE", "1");
    c
}

fn run_ok(dir: &Path, args: &[&str]) -> String {
    let out = qlab(dir, args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text
}

fn run_dir(dir: &Path) -> std::path::PathBuf {
    let runs = dir.join("runs/t");
    std::fs::read_dir(&runs)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.is_dir() && !p.ends_with("answers"))
        .unwrap()
}

fn steps(run: &Path) -> Vec<u64> {
    read_events(&run.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.event {
            RunEvent::Step(m) => Some(m.step),
            _ => None,
        })
        .collect()
}

#[test]
fn max_steps_stops_with_a_checkpoint_and_the_next_run_resumes_then_skips() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), 12);
    let first = run_ok(dir.path(), &["--max-steps", "3", "--every", "1"]);
    assert!(
        first.contains("start") && first.contains("step 3/6"),
        "{first}"
    );
    assert!(
        first.contains("interrupted (--max-steps 3 reached); resumable from step 3"),
        "{first}"
    );
    let second = run_ok(dir.path(), &[]);
    assert!(
        second.contains("resume from step 3") && second.contains("finished: 6 steps"),
        "{second}"
    );
    let run = run_dir(dir.path());
    let status: RunStatus = read_json(&run.join("status.json")).unwrap().unwrap();
    assert_eq!(status.state, RunState::Done);
    assert_eq!(steps(&run), (1..=6).collect::<Vec<_>>());
    assert!(
        run.join("stages/e1/adapter/adapter_model.safetensors")
            .exists()
    );
    assert!(run.join("stages/e1/adapter/adapter_config.json").exists());
    let third = run_ok(dir.path(), &[]);
    assert!(
        third.contains("done, skipped") && third.contains("0 finished"),
        "{third}"
    );
}

#[test]
fn sigterm_checkpoints_and_exits_cleanly_and_the_run_continues_later() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), 400);
    let child = qlab(dir.path(), &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let runs = dir.path().join("runs/t");
        if runs.exists()
            && std::fs::read_dir(&runs).unwrap().count() > 0
            && steps(&run_dir(dir.path())).len() >= 3
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{text}");
    assert!(text.contains("interrupted (stopped by a signal)"), "{text}");
    let run = run_dir(dir.path());
    let status: RunStatus = read_json(&run.join("status.json")).unwrap().unwrap();
    assert_eq!(status.state, RunState::Interrupted);
    let stopped_at = *steps(&run).last().unwrap();
    assert!(stopped_at < 200, "{stopped_at}");
    assert!(
        run.join(format!(
            "checkpoints/step-{stopped_at:08}/trainer_state.json"
        ))
        .exists(),
        "checkpoint at {stopped_at}"
    );
    let next = run_ok(
        dir.path(),
        &["--max-steps", &(stopped_at + 1).to_string(), "--every", "1"],
    );
    assert!(
        next.contains(&format!("resume from step {stopped_at}")),
        "{next}"
    );
    assert_eq!(steps(&run), (1..=stopped_at + 1).collect::<Vec<_>>());
}

/// The sweep end to end on the tiny model: `qlab run` trains, then answers the question set at base and e1;
/// a rating of one answer then shows in `qlab results`.
#[test]
fn a_finished_run_answers_its_questions_and_a_rating_reaches_the_results() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), 8);
    std::fs::write(
        dir.path().join("q.toml"),
        "id = \"sums\"\ntask = \"math\"\n[[question]]\nid = \"1\"\nquestion = \"3 plus 4\"\nreference = \"7\"\n\
         [[question]]\nid = \"2\"\nquestion = \"2 plus 2\"\nreference = \"4\"\n",
    )
    .unwrap();
    let config = std::fs::read_to_string(dir.path().join("t.toml")).unwrap().replace(
        "completion_marker = \"A : \"",
        "completion_marker = \"A : \"\ntask = \"math\"\nquestions = \"q.toml\"\neval_template = \"Q : {question} A : \"",
    ) + "[eval]\nmax_new_tokens = 3\n";
    std::fs::write(dir.path().join("t.toml"), config).unwrap();

    let out = run_ok(dir.path(), &["--every", "1"]);
    assert!(out.contains("1 finished"), "{out}");
    let run = run_dir(dir.path());
    let events = read_events(&run.join("metrics.jsonl")).unwrap();
    let finished_at = events
        .iter()
        .position(|e| matches!(e.event, RunEvent::RunFinished { .. }))
        .unwrap();
    let evaluated: Vec<&str> = events[finished_at..]
        .iter()
        .filter_map(|e| match &e.event {
            RunEvent::EvalDone { stage } => Some(stage.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(evaluated, ["base", "e1"]);
    let answered = events
        .iter()
        .filter(|e| matches!(e.event, RunEvent::AnswerReady { .. }))
        .count();
    assert_eq!(answered, 4, "2 questions x (base, e1)");
    let status: RunStatus = read_json(&run.join("status.json")).unwrap().unwrap();
    assert_eq!(status.state, RunState::Done);
    let answers = |dir: &Path| -> usize {
        let file = std::fs::read_dir(dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::read_to_string(file).unwrap().lines().count()
    };
    assert_eq!(answers(&run.join("answers/e1")), 2);
    assert_eq!(answers(&dir.path().join("runs/t/answers/base/tiny")), 2);

    // The e1 adapter exports in PEFT layout.
    let exported = dir.path().join("adapter-e1");
    let run_id = run.file_name().unwrap().to_str().unwrap().to_owned();
    let export = Command::new(env!("CARGO_BIN_EXE_qlab"))
        .current_dir(dir.path())
        .args([
            "export", "adapter", &run_id, "--stage", "e1", "--config", "t.toml", "--out",
        ])
        .arg(&exported)
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    for f in ["adapter_model.safetensors", "adapter_config.json"] {
        let ours = std::fs::read(exported.join(f)).unwrap();
        assert_eq!(
            ours,
            std::fs::read(run.join("stages/e1/adapter").join(f)).unwrap(),
            "{f}"
        );
    }

    // A second `qlab run` finds the answers complete and loads nothing.
    let again = run_ok(dir.path(), &[]);
    assert!(again.contains("1 skipped"), "{again}");
    assert_eq!(
        read_events(&run.join("metrics.jsonl")).unwrap().len(),
        events.len()
    );

    // One rating, as the rating screen records it, reaches the results table.
    use qlab::rating::journal::{AnswerKey, Entry, JournalLine, QuestionRef, append, now_rfc3339};
    let key = AnswerKey {
        item: QuestionRef {
            task: "math".into(),
            questions: "sums".into(),
            question: "1".into(),
        },
        model: "tiny".into(),
        stage: "e1".into(),
    };
    let scores = [
        ("Correct Answer", 4.0),
        ("Correct Reasoning", 3.0),
        ("Helpfulness", 5.0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let entry = Entry::Score {
        answer: key,
        run: None,
        scores,
        blind: None,
        unparsed: Default::default(),
    };
    append(
        &dir.path().join("runs/t/ratings.jsonl"),
        &qlab::rating::Rubric::default(),
        &JournalLine::new("me", now_rfc3339(), entry),
    )
    .unwrap();
    let results = Command::new(env!("CARGO_BIN_EXE_qlab"))
        .current_dir(dir.path())
        .args(["results", "t.toml", "--format", "json"])
        .output()
        .unwrap();
    assert!(
        results.status.success(),
        "{}",
        String::from_utf8_lossy(&results.stderr)
    );
    let cells: serde_json::Value = serde_json::from_slice(&results.stdout).unwrap();
    let cell = cells
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["stage"] == "e1")
        .unwrap();
    assert_eq!(
        (
            cell["task"].as_str(),
            cell["model"].as_str(),
            cell["n"].as_u64()
        ),
        (Some("math"), Some("tiny"), Some(1))
    );
    assert_eq!(cell["mean"].as_f64(), Some(4.0));
}

#[test]
fn detach_trains_in_its_own_session_and_logs_to_the_sweep_dir() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), 12);
    let text = run_ok(dir.path(), &["--detach"]);
    let pid: i32 = text
        .split("pid ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    // SAFETY: getsid(2) only reads the session id of a process.
    let (sid, ours) = unsafe { (libc::getsid(pid), libc::getsid(0)) };
    assert!(
        sid == pid || sid == -1,
        "the runner leads its own session ({sid} vs {pid})"
    );
    assert_ne!(sid, ours);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut state = None;
    while Instant::now() < deadline {
        if let Some(run) = std::fs::read_dir(dir.path().join("runs/t"))
            .ok()
            .and_then(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.path())
                    .find(|p| p.is_dir())
            })
        {
            state = read_json::<RunStatus>(&run.join("status.json"))
                .ok()
                .flatten()
                .map(|s| s.state);
            if state == Some(RunState::Done) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(state, Some(RunState::Done));
    let log = std::fs::read_to_string(dir.path().join("runs/t/runner.log")).unwrap();
    assert!(log.contains("finished: 6 steps"), "{log}");
}
