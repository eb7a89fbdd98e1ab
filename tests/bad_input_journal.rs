//! Never lose a judgement: a torn last line in any journal qlab keeps (ratings, answers, metrics logs) is
//! reported once with its file and line, and every writer (`qlab import-study`, `qlab rate`, the dashboard,
//! the answer and metrics writers) moves it aside and appends on a fresh line. Scores off the rubric are
//! refused on read, with file and line, and never written.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Tmux, rating_sweep, study_data};
use qlab::config::Config;
use qlab::rating::Rubric;
use qlab::rating::journal::{self, AnswerKey, Entry, JournalLine, QuestionRef};
use qlab::store::SweepPaths;
use qlab::store::jsonl::torn_path;

fn qlab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qlab"))
}

/// `qlab ARGS`: (exit code, stdout, stderr).
fn run(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = qlab().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn journal_of(config: &Path) -> PathBuf {
    let cfg = Config::load(config).unwrap();
    SweepPaths::new(&cfg.runs_dir(), &cfg.sweep.name).ratings_journal()
}

/// A score line of `rater` for question 1 of the rating sweep's e1 answers.
fn score(rater: &str, value: f64) -> JournalLine {
    let answer = AnswerKey {
        item: QuestionRef {
            task: "math".into(),
            questions: "sums".into(),
            question: "1".into(),
        },
        model: "tiny".into(),
        stage: "e1".into(),
    };
    let scores = Rubric::default()
        .criteria
        .into_iter()
        .map(|c| (c, value))
        .collect();
    JournalLine::new(
        rater,
        "2026-01-01T00:00:00Z".into(),
        Entry::Score {
            answer,
            run: None,
            scores,
            blind: None,
            unparsed: Default::default(),
        },
    )
}

const TORN: &str = "{\"rater\":\"ann\",\"time\":\"2026-01-01T00:00:01Z\",\"kind\":\"sco";

fn tear(path: &Path) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    f.write_all(TORN.as_bytes()).unwrap();
}

#[test]
fn results_report_a_torn_tail_once_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = rating_sweep(dir.path());
    let path = journal_of(&config);
    journal::append(&path, &Rubric::default(), &score("ann", 4.0)).unwrap();
    tear(&path);
    let (code, stdout, stderr) = run(&["results".as_ref(), config.as_os_str()]);
    assert_eq!(code, 0, "{stderr}");
    let want = format!("warning: {}:2: torn last line", path.display());
    assert_eq!(stderr.matches(&want).count(), 1, "{stderr}");
    assert!(
        stdout.contains("tiny"),
        "the standing judgement counts: {stdout}"
    );
}

#[test]
fn scores_off_the_rubric_are_refused_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = rating_sweep(dir.path());
    let path = journal_of(&config);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let good = serde_json::to_string(&score("ann", 4.0)).unwrap();
    for (bad, why) in [
        ("99.0", "score 99 for"),
        ("-5.0", "score -5 for"),
        ("4.5", "score 4.5 for"),
        ("1e999", "not a ratings journal line"),
        ("\"4\"", "not a ratings journal line"),
    ] {
        let line = good.replace("4.0", bad);
        std::fs::write(&path, format!("{good}\n{line}\n")).unwrap();
        let (code, _, stderr) = run(&["results".as_ref(), config.as_os_str()]);
        let want = format!("{}:2: {why}", path.display());
        assert_eq!(code, 2, "{bad}: {stderr}");
        assert!(stderr.starts_with(&want), "{bad}: wanted {want}\n{stderr}");
        assert!(!stderr.contains("Location:"), "{stderr}");
    }
    let err = journal::append(&path, &Rubric::default(), &score("ann", 6.0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("score 6 for") && err.contains("not written"),
        "{err}"
    );
}

#[test]
fn a_journal_line_that_never_ends_is_refused_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = rating_sweep(dir.path());
    let path = journal_of(&config);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(b"{}\n").unwrap();
    f.write_all(&vec![b' '; (64 << 20) + 1]).unwrap();
    let (code, _, stderr) = run(&["results".as_ref(), config.as_os_str()]);
    assert_eq!(code, 2, "{stderr}");
    let want = format!("{}:2: runs past 64 MiB without a newline", path.display());
    assert!(stderr.starts_with(&want), "{stderr}");
}

#[test]
fn import_study_appends_on_a_fresh_line_after_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("study.toml");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/study.toml"),
        &config,
    )
    .unwrap();
    let path = dir.path().join("runs/study/ratings.jsonl");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    tear(&path);
    let raw = study_data::fixtures().join("seed-benchmarks");
    let (code, stdout, stderr) = run(&[
        "import-study".as_ref(),
        raw.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("36 ratings written"), "{stdout}");
    let moved = format!("{}:1: torn last line", path.display());
    assert!(
        stderr.contains(&moved) && stderr.contains("moved to"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(torn_path(&path)).unwrap(),
        format!("{TORN}\n")
    );
    let lines = journal::read(&path, &Rubric::default()).unwrap();
    assert_eq!(lines.len(), 36);
    let (code, _, stderr) = run(&["results".as_ref(), config.as_os_str()]);
    assert_eq!(code, 0, "{stderr}");
}

/// Rate one item with the keyboard in `command` (tmux) on a journal with a torn tail: the judgement lands
/// on its own line after the one standing before it.
fn rate_after_a_torn_tail(name: &str, command: impl Fn(&Path) -> String, open: &[&str]) {
    if !Tmux::available() {
        eprintln!("SKIPPED: tmux is not installed (the rating test drives the binary in tmux)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = rating_sweep(dir.path());
    let path = journal_of(&config);
    journal::append(&path, &Rubric::default(), &score("ann", 2.0)).unwrap();
    tear(&path);
    let wait = Duration::from_secs(60);
    let tmux = Tmux::start(name, &command(&config), (150, 45));
    for key in open {
        tmux.send(key);
    }
    tmux.wait_for("the first item", wait, |s| s.contains("item 1/2"));
    tmux.send("4");
    tmux.wait_for("the score saved", wait, |s| s.contains("saved"));
    let pid = tmux.display("#{pane_pid}");
    tmux.send("q");
    let quit = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        !Command::new("kill")
            .args(["-0", &pid])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(quit, "`q` ends the program after the save");
    drop(tmux);
    let lines = journal::read(&path, &Rubric::default()).unwrap();
    let raters: Vec<&str> = lines.iter().map(|l| l.rater.as_str()).collect();
    assert_eq!(raters, ["ann", "tester"], "{lines:?}");
    assert_eq!(
        std::fs::read_to_string(torn_path(&path)).unwrap(),
        format!("{TORN}\n")
    );
}

#[test]
fn qlab_rate_writes_a_judgement_on_a_fresh_line_after_a_torn_tail() {
    rate_after_a_torn_tail(
        "torn-rate",
        |config| {
            format!(
                "exec {} rate {} --rater tester",
                env!("CARGO_BIN_EXE_qlab"),
                config.display()
            )
        },
        &[],
    );
}

#[test]
fn the_dashboard_writes_a_judgement_on_a_fresh_line_after_a_torn_tail() {
    rate_after_a_torn_tail(
        "torn-tui",
        |config| {
            format!(
                "exec {} tui {} --rater tester",
                env!("CARGO_BIN_EXE_qlab"),
                config.display()
            )
        },
        &["a"],
    );
}

#[test]
fn answer_and_metrics_writers_start_on_a_fresh_line() {
    let dir = tempfile::tempdir().unwrap();
    let answers = dir.path().join("answers/e1/sums-ff.jsonl");
    let record = r#"{"question_id":"1","stage":"e1","model":"tiny","prompt":"p","answer":"a","new_tokens":1,"secs":0.1}"#;
    qlab::store::atomic::append_line_synced(&answers, record).unwrap();
    tear(&answers);
    assert_eq!(
        qlab::eval::answers::read_answers(&answers).unwrap().len(),
        1
    );
    assert_eq!(
        qlab::rating::answers::read_answers(&answers).unwrap().len(),
        1
    );
    qlab::store::atomic::append_line_synced(&answers, &record.replace("\"1\"", "\"2\"")).unwrap();
    assert_eq!(
        qlab::eval::answers::read_answers(&answers).unwrap().len(),
        2
    );

    let metrics = dir.path().join("run/metrics.jsonl");
    let event = qlab::sweep::events::LoggedEvent {
        ts: 1.0,
        run: "r".into(),
        event: qlab::sweep::events::RunEvent::Paused { step: 3 },
    };
    let mut log = qlab::sweep::metrics_log::MetricsLog::open(&metrics).unwrap();
    log.append(&event).unwrap();
    tear(&metrics);
    log.append(&event).unwrap();
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.lines().all(|l| l.starts_with("{\"ts\":1.0")), "{text}");
    assert!(torn_path(&metrics).is_file());
}
