//! End-to-end runs of the real `qlab` binary for the foundation commands.

#[allow(dead_code)] // these tests use only the study-data helpers
mod common;

use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;

use common::study_data;

fn qlab() -> Command {
    let mut c = Command::cargo_bin("qlab").unwrap();
    c.env("QLAB_LOG_DIR", std::env::temp_dir().join("qlab-test-logs"));
    c
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn validate_passes_on_the_demo_and_exits_2_with_every_error() {
    qlab()
        .current_dir(root())
        .arg("validate")
        .assert()
        .success()
        .stdout(contains("ok: sweep `demo`"));
    let bad = root().join("tests/fixtures/invalid/many-errors.toml");
    qlab()
        .arg("validate")
        .arg(&bad)
        .assert()
        .code(2)
        .stderr(contains("many-errors.toml:").and(contains("3 error(s)")));
}

#[test]
fn validate_names_missing_files_and_how_to_get_them() {
    qlab()
        .arg("validate")
        .arg(root().join("examples/study.toml"))
        .assert()
        .code(2)
        .stderr(
            contains("orca-math-word-problems-200k.jsonl does not exist")
                .and(contains("qlab import-questions")),
        );
}

#[test]
fn plan_json_lists_runs_with_stable_ids() {
    let out = qlab()
        .arg("plan")
        .arg(root().join("examples/study.toml"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success());
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 14);
    assert_eq!(runs[0]["model"], "llama-2-7b");
    assert_eq!(runs[0]["stages"], serde_json::json!(["base", "e1", "e3"]));
    let again = qlab()
        .arg("plan")
        .arg(root().join("examples/study.toml"))
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(out.stdout, again.stdout);
}

/// Imports both question files of `dir` (laid out like the study's `seed-questions/`) through the binary:
/// (file, task, items, start of the first reference).
fn import_questions_reads_every_item(dir: &Path, files: [(&str, &str, usize, &str); 2]) {
    let out_dir = tempfile::tempdir().unwrap();
    for (file, task, items, first_ref_start) in files {
        let out = out_dir.path().join(format!("{task}.toml"));
        qlab()
            .arg("import-questions")
            .arg(dir.join(file))
            .args(["--task", task, "--out"])
            .arg(&out)
            .assert()
            .success()
            .stderr(contains(format!("{items} question(s)")));
        let set = qlab::eval::QuestionSet::load(&out).unwrap();
        assert_eq!(set.questions.len(), items);
        assert!(set.questions[0].reference.starts_with(first_ref_start));
        let ids: Vec<String> = set.questions.iter().map(|q| q.id.clone()).collect();
        let expected: Vec<String> = (1..=items).map(|n| n.to_string()).collect();
        assert_eq!(ids, expected);
    }
}

#[test]
fn import_questions_reads_every_item_of_the_fixtures() {
    import_questions_reads_every_item(
        &study_data::fixtures().join("seed-questions"),
        [
            ("Maths Benchmark.txt", "math", 6, "The fullest box holds 9"),
            ("bio benchmark.txt", "bio", 5, "A sign is something"),
        ],
    );
}

#[test]
fn study_data_import_questions_reads_all_twenty_study_items() {
    let Some(data) =
        study_data::dir_or_skip("study_data_import_questions_reads_all_twenty_study_items")
    else {
        return;
    };
    import_questions_reads_every_item(
        &data.join("seed-questions"),
        [
            (
                "Maths Benchmark.txt",
                "math",
                10,
                "The largest number is 14",
            ),
            (
                "bio benchmark.txt",
                "bio",
                10,
                "Parkinson's disease is a progressive",
            ),
        ],
    );
}

#[test]
fn import_questions_fields_are_exact() {
    let dir = study_data::fixtures().join("seed-questions");
    for file in ["Maths Benchmark.txt", "bio benchmark.txt"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        assert_eq!(
            text.matches("\r\n").count(),
            text.matches('\n').count(),
            "{file} keeps the study's CRLF line endings"
        );
    }
    let math = qlab::eval::study_questions::import(&dir.join("Maths Benchmark.txt"), None).unwrap();
    let q = &math.questions;
    assert_eq!(math.task, "math");
    assert_eq!(
        q[0].section.as_deref(),
        Some("Questions From Training Data")
    );
    assert_eq!(
        q[1].question.as_deref(),
        Some("How many even numbers lie between 1 and 15?")
    );
    // `3 Question`: the number and the word apart, as the study writes some items.
    assert_eq!(q[2].reference, "12+8=20");
    assert!(q[2].section.as_deref().unwrap().ends_with("0 Shot"));
    // The one-shot item holds an example question, its solution and the new question.
    let one_shot = q[3].question.as_deref().unwrap();
    assert_eq!(one_shot.lines().count(), 3);
    assert!(one_shot.ends_with("A number minus 6 leaves 10. Find the number."));
    assert_eq!(q[3].reference, "10+6=16");
    assert!(q[3].section.as_deref().unwrap().ends_with("1 Shot"));
    assert_eq!(
        q[4].section.as_deref(),
        Some("Questions Outside the training data")
    );
    assert_eq!(
        q[4].reference,
        "Each friend gets 84 \u{f7} 7 = 12 stickers."
    );
    assert!(
        q[5].question
            .as_deref()
            .unwrap()
            .starts_with("A tram leaves every 12 minutes")
    );
    assert!(
        q.iter()
            .all(|x| x.instruction.is_none() && !x.reference.contains('\r'))
    );

    let bio = qlab::eval::study_questions::import(&dir.join("bio benchmark.txt"), None).unwrap();
    let b = &bio.questions;
    assert_eq!(bio.task, "bio");
    assert_eq!(b[0].section.as_deref(), Some("Within training data"));
    assert_eq!(
        b[0].instruction.as_deref(),
        Some("Tell a sign apart from a symptom in the case given.")
    );
    assert_eq!(
        b[0].input.as_deref(),
        Some("Case: a runner with a sprained ankle. Sign: swelling")
    );
    assert_eq!(b[2].input.as_deref(), Some(""), "the one empty Input");
    assert_eq!(b[3].reference, "The heart.");
    assert_eq!(b[3].section.as_deref(), Some("Outside Training Data"));
    assert_eq!(
        b[4].input.as_deref(),
        Some("A student who sleeps badly before exams.")
    );
    assert!(
        b.iter()
            .all(|x| x.question.is_none() && !x.reference.contains('\r'))
    );
}

#[test]
fn study_data_import_questions_fields_are_exact() {
    let Some(data) = study_data::dir_or_skip("study_data_import_questions_fields_are_exact") else {
        return;
    };
    let math =
        qlab::eval::study_questions::import(&data.join("seed-questions/Maths Benchmark.txt"), None)
            .unwrap();
    let q = &math.questions;
    assert_eq!(
        q[0].section.as_deref(),
        Some("Questions From Training Data")
    );
    assert_eq!(
        q[1].question.as_deref(),
        Some("Find how many multiples of 4 are less than 30.")
    );
    assert_eq!(q[3].reference, "23-7=16");
    assert!(q[3].section.as_deref().unwrap().ends_with("0 Shot"));
    // The one-shot item holds an example question, its solution and the new question.
    let six = q[5].question.as_deref().unwrap();
    assert_eq!(six.lines().count(), 3);
    assert_eq!(q[5].reference, "13-7=6");
    assert_eq!(
        q[7].section.as_deref(),
        Some("Questions Outside the training data")
    );
    assert!(
        q[9].question
            .as_deref()
            .unwrap()
            .starts_with("Milan has two phone lines")
    );
    assert!(
        q.iter()
            .all(|x| x.instruction.is_none() && !x.reference.contains('\r'))
    );

    let bio =
        qlab::eval::study_questions::import(&data.join("seed-questions/bio benchmark.txt"), None)
            .unwrap();
    let b = &bio.questions;
    assert_eq!(bio.task, "bio");
    assert_eq!(
        b[0].input.as_deref(),
        Some("Condition: Parkinson's Disease Symptom: Tremor")
    );
    assert_eq!(
        b[2].input.as_deref(),
        Some(""),
        "the study's one empty Input"
    );
    assert_eq!(
        b[3].reference,
        "Tiredness, drowsiness, low sex drive, weight gain, and electric shock-like sensations."
    );
    assert_eq!(b[5].section.as_deref(), Some("Outside Training Data"));
    assert_eq!(
        b[8].input.as_deref(),
        Some("Patient is a 5-year-old child with lead exposure levels of 10 mcg/dL.")
    );
}

#[test]
fn demo_data_regenerates_the_committed_file_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("arith.jsonl");
    qlab()
        .arg("demo-data")
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(root().join("data/arith.jsonl")).unwrap()
    );
}

#[test]
fn every_command_has_help() {
    for cmd in [
        "validate",
        "plan",
        "status",
        "import-questions",
        "demo-data",
    ] {
        qlab()
            .args([cmd, "--help"])
            .assert()
            .success()
            .stdout(contains("Usage: qlab"));
    }
}

#[test]
fn bench_generate_json_reports_every_figure_for_exactly_batch_times_new_tokens() {
    let out = qlab()
        .args(["bench", "generate", "--model"])
        .arg(root().join("tests/fixtures/models/llama"))
        .args(["--quant", "none", "--adapter-rank", "4", "--batch", "3"])
        .args(["--prompt", "5", "--new", "4", "--repeats", "2", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let echoed = [
        ("batch", 3),
        ("prompt", 5),
        ("new", 4),
        ("adapter_rank", 4),
        ("repeats", 2),
    ];
    for (key, want) in echoed {
        assert_eq!(report[key], want, "{key}");
    }
    assert_eq!(report["new_tokens"], 3 * 4);
    assert_eq!(
        (report["device"].as_str(), report["quant"].as_str()),
        (Some("cpu"), Some("f32"))
    );
    assert!(report["threads"].as_u64().is_some_and(|t| t >= 1));
    assert_eq!(report["runs"].as_array().map(Vec::len), Some(2));
    assert!(
        report["runs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["new_tokens"] == 12)
    );
    let rates = [
        "decode_tokens_per_s",
        "tokens_per_s",
        "time_to_first_token_s",
        "warmup_s",
        "peak_rss_mib",
    ];
    for key in rates {
        let v = report[key].as_f64().unwrap_or(f64::NAN);
        assert!(v.is_finite() && v > 0.0, "{key}: {v}");
    }
    assert!(
        report["peak_vram_gib"].is_null(),
        "no VRAM figure on the CPU"
    );
}
