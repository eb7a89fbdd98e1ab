//! The study import reproduces the study's scores from its 42 raw files (../shared/data/seed-benchmarks).

use std::path::{Path, PathBuf};

use qlab::rating::Rubric;
use qlab::rating::journal;
use qlab::rating::ratings::Ratings;
use qlab::rating::results::build;
use qlab::rating::study::store::{StudyTarget, store};
use qlab::rating::study::{STUDY_RATER, read_study_dir};
use qlab::store::SweepPaths;

fn study_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/seed-benchmarks")
}

/// (task, model, [base, e1, e3]) as the study's table gives them (two decimals), with the number of
/// values kept when a malformed cell was left out (30 otherwise).
/// (two-decimal mean, values kept) at base, e1, e3.
type Stages = [(&'static str, usize); 3];

const EXPECTED: [(&str, &str, Stages); 14] = [
    (
        "math",
        "llama-2-7b",
        [("1.13", 30), ("2.50", 30), ("2.07", 30)],
    ),
    (
        "math",
        "llama-3-8b",
        [("2.17", 30), ("3.13", 30), ("3.90", 29)],
    ),
    (
        "math",
        "llama-3.1-8b",
        [("1.73", 30), ("3.67", 30), ("4.97", 30)],
    ),
    (
        "math",
        "gemma-7b",
        [("1.07", 30), ("2.53", 30), ("3.20", 30)],
    ),
    (
        "math",
        "gemma-2-9b",
        [("4.20", 30), ("4.07", 30), ("4.07", 30)],
    ),
    (
        "math",
        "mistral-7b-v0.3",
        [("2.67", 30), ("2.80", 30), ("3.14", 29)],
    ),
    (
        "math",
        "qwen-2-7b",
        [("4.07", 29), ("4.57", 30), ("3.55", 30)],
    ),
    (
        "bio",
        "llama-2-7b",
        [("4.97", 30), ("4.87", 30), ("4.60", 30)],
    ),
    (
        "bio",
        "llama-3-8b",
        [("5.00", 30), ("4.60", 30), ("4.37", 30)],
    ),
    (
        "bio",
        "llama-3.1-8b",
        [("4.77", 30), ("4.77", 30), ("4.67", 30)],
    ),
    (
        "bio",
        "gemma-7b",
        [("5.00", 30), ("4.40", 30), ("4.37", 30)],
    ),
    (
        "bio",
        "gemma-2-9b",
        [("5.00", 30), ("4.43", 30), ("4.50", 30)],
    ),
    (
        "bio",
        "mistral-7b-v0.3",
        [("4.83", 30), ("4.83", 30), ("4.70", 30)],
    ),
    (
        "bio",
        "qwen-2-7b",
        [("4.80", 30), ("4.43", 30), ("3.93", 30)],
    ),
];
const STAGES: [&str; 3] = ["base", "e1", "e3"];

#[test]
fn every_one_of_the_42_cells_is_reproduced_from_the_raw_files() {
    let import = read_study_dir(&study_dir(), &Rubric::default()).unwrap();
    assert_eq!(import.files.len(), 42);
    for (task, model, cells) in EXPECTED {
        for (stage, (mean, values)) in STAGES.iter().zip(cells) {
            let f = import
                .file(model, task, stage)
                .unwrap_or_else(|| panic!("no file for {model} {task} {stage}"));
            assert_eq!(f.answers.len(), 10, "{}", f.path.display());
            assert_eq!(
                format!("{:.2}", f.mean().unwrap()),
                mean,
                "{model} {task} {stage}"
            );
            assert_eq!(f.values(), values, "{model} {task} {stage}");
        }
    }
}

#[test]
fn malformed_cells_are_reported_with_file_and_line_and_the_half_point_is_kept() {
    let import = read_study_dir(&study_dir(), &Rubric::default()).unwrap();
    let reported: Vec<(String, usize, &str, &str)> = import
        .problems
        .iter()
        .map(|p| {
            (
                p.file.file_name().unwrap().to_string_lossy().into_owned(),
                p.line,
                p.criterion.as_str(),
                p.raw.as_str(),
            )
        })
        .collect();
    assert_eq!(
        reported,
        [
            (
                "Qwen2-7B-Instruct-bnb-4bit-math-benchmark.txt".to_string(),
                148,
                "Helpfulness",
                "55"
            ),
            (
                "lora-llama-3-8b-Math-e3-math-benchmark.txt".to_string(),
                149,
                "Correct Answer",
                "75"
            ),
            (
                "lora-mistral-7b-v0.3-Math-e3-math-benchmark.txt".to_string(),
                231,
                "Helpfulness",
                ""
            ),
        ]
    );
    let message = import.problems[0].to_string();
    assert!(
        message.contains("Qwen2-7B-Instruct-bnb-4bit-math-benchmark.txt:148")
            && message.contains("left unrated")
    );
    let qwen_e3 = import.file("qwen-2-7b", "math", "e3").unwrap();
    let halves: Vec<f64> = qwen_e3
        .answers
        .iter()
        .flat_map(|a| a.scores.values())
        .copied()
        .filter(|v| v.fract() != 0.0)
        .collect();
    assert_eq!(halves, [4.5]);
    let llama_e3 = import.file("llama-3-8b", "math", "e3").unwrap();
    let answer = llama_e3
        .answers
        .iter()
        .find(|a| !a.unparsed.is_empty())
        .unwrap();
    assert_eq!(answer.unparsed["Correct Answer"], "75");
    assert!(!answer.scores.contains_key("Correct Answer"));
}

#[test]
fn answers_and_prompts_are_split_at_the_response_marker() {
    let import = read_study_dir(&study_dir(), &Rubric::default()).unwrap();
    for f in &import.files {
        for a in &f.answers {
            assert!(
                !a.answer.is_empty(),
                "{}: question {} has no answer text",
                f.path.display(),
                a.question
            );
            assert!(
                a.prompt.ends_with("### Response:"),
                "{}: question {}",
                f.path.display(),
                a.question
            );
        }
        let ids: Vec<&str> = f.answers.iter().map(|a| a.question.as_str()).collect();
        assert_eq!(
            ids,
            ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"],
            "{}",
            f.path.display()
        );
    }
}

#[test]
fn stored_import_gives_the_same_table_through_journal_and_results_and_is_idempotent() {
    let import = read_study_dir(&study_dir(), &Rubric::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sweep = SweepPaths::new(dir.path(), "study");
    let run_for = |model: &str, task: &str| Some(format!("{model}-{task}-run"));
    let questions_for = |task: &str| task.to_owned();
    let target = StudyTarget {
        sweep: &sweep,
        run_for: &run_for,
        questions_for: &questions_for,
    };
    let report = store(&import, &target, "2025-01-09T00:00:00Z").unwrap();
    assert_eq!(report.answer_files.len(), 42);
    assert_eq!(report.ratings_written, 420);
    let answers = qlab::rating::answers::read_answers(
        &sweep.run("qwen-2-7b-bio-run").answers("e3", "bio", "study"),
    )
    .unwrap();
    assert_eq!(answers.len(), 10);
    assert_eq!(answers[0].model, "qwen-2-7b");
    assert!(
        sweep
            .base_answers("llama-3.1-8b", "math", "study")
            .is_file()
    );

    let ratings = Ratings::replay(&journal::read(&sweep.ratings_journal()).unwrap());
    assert_eq!(ratings.raters(), [STUDY_RATER]);
    let tasks = build(&ratings, &Rubric::default(), &[]);
    for (task, model, cells) in EXPECTED {
        let t = tasks.iter().find(|t| t.task == task).unwrap();
        for (stage, (mean, _)) in STAGES.iter().zip(cells) {
            let cell = t.cell(model, stage).unwrap();
            assert_eq!(format!("{:.2}", cell.mean), mean, "{model} {task} {stage}");
            assert_eq!(cell.n, 10);
        }
    }
    let qwen_bio = tasks.iter().find(|t| t.task == "bio").unwrap();
    assert!(qwen_bio.cell("qwen-2-7b", "e3").unwrap().falls_after_e1);
    assert!(!tasks[1].cell("llama-3.1-8b", "e3").unwrap().falls_after_e1);

    let again = store(&import, &target, "2025-01-10T00:00:00Z").unwrap();
    assert_eq!((again.ratings_written, again.ratings_unchanged), (0, 420));
}
