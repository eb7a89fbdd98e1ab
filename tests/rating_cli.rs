//! The rating commands end to end through the real binary: the study import and its results, exports,
//! and a keyboard rating in `qlab rate` that survives SIGKILL (driven in tmux).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use calamine::{Reader, Xlsx, open_workbook};
use common::{Tmux, rating_sweep};
use qlab::config::Config;
use qlab::rating::journal::{self, Entry};
use qlab::store::SweepPaths;

fn qlab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qlab"))
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run_ok(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

#[test]
fn import_study_then_results_and_exports_show_the_studys_table() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("study.toml");
    std::fs::copy(repo().join("examples/study.toml"), &config).unwrap();
    let raw = repo().join("../shared/data/seed-benchmarks");
    let (stdout, stderr) = run_ok(
        qlab()
            .arg("import-study")
            .arg(&raw)
            .arg("--config")
            .arg(&config),
    );
    assert!(
        stdout.contains("imported 42 files") && stdout.contains("420 ratings written"),
        "{stdout}"
    );
    assert!(
        stderr.contains("Qwen2-7B-Instruct-bnb-4bit-math-benchmark.txt:148"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("left unrated").count(), 3, "{stderr}");

    let (json, _) = run_ok(
        qlab()
            .arg("results")
            .arg(&config)
            .args(["--format", "json"]),
    );
    let cells: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(cells.len(), 42);
    let mean = |task: &str, model: &str, stage: &str| {
        let c = cells
            .iter()
            .find(|c| c["task"] == task && c["model"] == model && c["stage"] == stage)
            .unwrap();
        format!("{:.2}", c["mean"].as_f64().unwrap())
    };
    assert_eq!(
        [
            mean("math", "llama-3.1-8b", "base"),
            mean("math", "llama-3.1-8b", "e1"),
            mean("math", "llama-3.1-8b", "e3")
        ],
        ["1.73", "3.67", "4.97"]
    );
    assert_eq!(
        [
            mean("bio", "qwen-2-7b", "base"),
            mean("bio", "qwen-2-7b", "e1"),
            mean("bio", "qwen-2-7b", "e3")
        ],
        ["4.80", "4.43", "3.93"]
    );
    let first = &cells[0];
    assert_eq!(first["n"], 10);
    assert_eq!(first["criteria"].as_object().unwrap().len(), 3);

    let (table, _) = run_ok(qlab().arg("results").arg(&config));
    let llama = table
        .lines()
        .find(|l| l.starts_with("llama-3.1-8b") && l.contains("1.73"))
        .unwrap();
    assert!(
        llama.contains("3.67 (+1.93)") && llama.contains("4.97 (+3.23)"),
        "{table}"
    );
    let qwen_bio = table
        .lines()
        .filter(|l| l.starts_with("qwen-2-7b"))
        .find(|l| l.contains("4.80"))
        .unwrap();
    assert!(qwen_bio.contains("3.93 (-0.87) !"), "{table}");
    let after_llama = table.lines().skip_while(|l| *l != llama).nth(1).unwrap();
    assert!(
        after_llama.starts_with("  95% CI") && after_llama.matches('-').count() == 3,
        "each model's row is followed by its cells' bootstrap intervals: {table}"
    );

    let xlsx = dir.path().join("study.xlsx");
    let md = dir.path().join("study.md");
    run_ok(
        qlab()
            .args(["export", "results", "--config"])
            .arg(&config)
            .arg("--xlsx")
            .arg(&xlsx)
            .arg("--md")
            .arg(&md),
    );
    let mut book: Xlsx<_> = open_workbook(&xlsx).unwrap();
    assert_eq!(book.sheet_names(), ["bio", "math", "Summary"]);
    assert_eq!(
        book.worksheet_range("math").unwrap().rows().count(),
        1 + 7 * 3 * 10
    );
    assert_eq!(
        book.worksheet_range("Summary").unwrap().rows().count(),
        1 + 42
    );
    assert!(
        std::fs::read_to_string(&md)
            .unwrap()
            .contains("| llama-3.1-8b | 1.73 | 3.67 (+1.93) | 4.97 (+3.23) |")
    );
}

#[test]
fn a_rating_made_with_the_keyboard_survives_sigkill() {
    if !Tmux::available() {
        eprintln!("SKIPPED: tmux is not installed (the rating test drives the binary in tmux)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = rating_sweep(dir.path());
    let command = format!(
        "exec {} rate {} --rater tester",
        env!("CARGO_BIN_EXE_qlab"),
        config.display()
    );
    let wait = Duration::from_secs(20);
    let tmux = Tmux::start("rate", &command, (150, 45));
    tmux.wait_for("the first item", wait, |s| s.contains("item 1/2"));
    tmux.send("4");
    tmux.wait_for("the score saved", wait, |s| s.contains("saved"));
    let pid = tmux.display("#{pane_pid}");
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success()
    );
    drop(tmux);

    let cfg = Config::load(&config).unwrap();
    let journal_path = SweepPaths::new(&cfg.runs_dir(), "rate-test").ratings_journal();
    let lines = journal::read(&journal_path).unwrap();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let Entry::Score {
        scores,
        blind,
        answer,
        ..
    } = &lines[0].entry
    else {
        panic!("{lines:?}")
    };
    assert_eq!(lines[0].rater, "tester");
    assert_eq!(scores.get("Correct Answer"), Some(&4.0));
    assert_eq!(answer.item.question, "1");
    assert_eq!(
        blind.as_ref().unwrap().a,
        answer.stage,
        "A was focused, so A's answer was scored"
    );

    let tmux = Tmux::start("rate-again", &command, (150, 45));
    let screen = tmux.wait_for("the first item again", wait, |s| s.contains("item 1/2"));
    assert!(screen.contains("Correct Answer     4"), "{screen}");
    assert!(
        screen.contains("rated 0/2") && screen.contains("rater tester"),
        "{screen}"
    );
}
