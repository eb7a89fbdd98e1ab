//! The study import reproduces the study's scores from its raw files: checked on the project's own fixtures
//! in the study's formats (tests/fixtures/study), and on the study's 42 real files when `QLAB_STUDY_DATA`
//! names their directory.

#[allow(dead_code)] // these tests use only the study-data helpers
mod common;

use std::path::Path;

use common::study_data;
use qlab::rating::Rubric;
use qlab::rating::journal;
use qlab::rating::ratings::Ratings;
use qlab::rating::results::build;
use qlab::rating::study::store::{StudyTarget, store};
use qlab::rating::study::{STUDY_RATER, read_study_dir};
use qlab::store::SweepPaths;

/// (two-decimal mean, values kept) at base, e1, e3; a file keeps questions x 3 values unless a malformed
/// cell was left out.
type Stages = [(&'static str, usize); 3];
/// (task, model, its three stages).
type Row = (&'static str, &'static str, Stages);
/// (file name, line, criterion, raw cell) of a reported cell.
type Problem = (&'static str, usize, &'static str, &'static str);

/// What one data directory must give.
struct Expected {
    files: usize,
    questions: usize,
    rows: &'static [Row],
    problems: [Problem; 3],
    /// (model, task, stage) of the file with the one half point.
    half_point: (&'static str, &'static str, &'static str),
    /// (model, task, stage, criterion, raw) of an out-of-scale cell kept as unparsed text.
    out_of_scale: (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    ),
    /// (task, model) whose e3 falls below its e1, and one whose e3 does not.
    falls: (&'static str, &'static str),
    holds: (&'static str, &'static str),
}

const STAGES: [&str; 3] = ["base", "e1", "e3"];

/// The fixtures: 2 models x 2 tasks x 3 stages, 3 questions a file; means computed by hand from their cells.
const FIXTURES: Expected = Expected {
    files: 12,
    questions: 3,
    rows: &[
        (
            "math",
            "llama-3-8b",
            [("1.33", 9), ("3.00", 9), ("4.50", 8)],
        ),
        ("math", "qwen-2-7b", [("3.25", 8), ("4.33", 9), ("3.72", 9)]),
        ("bio", "llama-3-8b", [("5.00", 9), ("4.56", 9), ("4.78", 9)]),
        ("bio", "qwen-2-7b", [("4.89", 9), ("4.44", 9), ("3.50", 8)]),
    ],
    problems: [
        (
            "Qwen2-7B-Instruct-bnb-4bit-math-benchmark.txt",
            26,
            "Helpfulness",
            "55",
        ),
        (
            "lora-llama-3-8b-Math-e3-math-benchmark.txt",
            26,
            "Correct Answer",
            "75",
        ),
        (
            "lora-qwen-2-7b-Bio-e3-bio-benchmark.txt",
            49,
            "Helpfulness",
            "",
        ),
    ],
    half_point: ("qwen-2-7b", "math", "e3"),
    out_of_scale: ("llama-3-8b", "math", "e3", "Correct Answer", "75"),
    falls: ("bio", "qwen-2-7b"),
    holds: ("math", "llama-3-8b"),
};

/// The study's 42 files, as the study's table gives them (two decimals).
const STUDY: Expected = Expected {
    files: 42,
    questions: 10,
    rows: &[
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
    ],
    problems: [
        (
            "Qwen2-7B-Instruct-bnb-4bit-math-benchmark.txt",
            148,
            "Helpfulness",
            "55",
        ),
        (
            "lora-llama-3-8b-Math-e3-math-benchmark.txt",
            149,
            "Correct Answer",
            "75",
        ),
        (
            "lora-mistral-7b-v0.3-Math-e3-math-benchmark.txt",
            231,
            "Helpfulness",
            "",
        ),
    ],
    half_point: ("qwen-2-7b", "math", "e3"),
    out_of_scale: ("llama-3-8b", "math", "e3", "Correct Answer", "75"),
    falls: ("bio", "qwen-2-7b"),
    holds: ("math", "llama-3.1-8b"),
};

fn every_cell_is_reproduced(dir: &Path, e: &Expected) {
    let import = read_study_dir(dir, &Rubric::default()).unwrap();
    assert_eq!(import.files.len(), e.files);
    for (task, model, cells) in e.rows {
        for (stage, (mean, values)) in STAGES.iter().zip(cells) {
            let f = import
                .file(model, task, stage)
                .unwrap_or_else(|| panic!("no file for {model} {task} {stage}"));
            assert_eq!(f.answers.len(), e.questions, "{}", f.path.display());
            assert_eq!(
                format!("{:.2}", f.mean().unwrap()),
                *mean,
                "{model} {task} {stage}"
            );
            assert_eq!(f.values(), *values, "{model} {task} {stage}");
        }
    }
}

fn malformed_cells_are_reported_and_the_half_point_is_kept(dir: &Path, e: &Expected) {
    let import = read_study_dir(dir, &Rubric::default()).unwrap();
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
    let expected: Vec<(String, usize, &str, &str)> = e
        .problems
        .iter()
        .map(|(file, line, criterion, raw)| (file.to_string(), *line, *criterion, *raw))
        .collect();
    assert_eq!(reported, expected);
    let message = import.problems[0].to_string();
    let (file, line, ..) = e.problems[0];
    assert!(
        message.contains(&format!("{file}:{line}")) && message.contains("left unrated"),
        "{message}"
    );
    let (model, task, stage) = e.half_point;
    let halves: Vec<f64> = import
        .file(model, task, stage)
        .unwrap()
        .answers
        .iter()
        .flat_map(|a| a.scores.values())
        .copied()
        .filter(|v| v.fract() != 0.0)
        .collect();
    assert_eq!(halves, [4.5]);
    let (model, task, stage, criterion, raw) = e.out_of_scale;
    let answer = import
        .file(model, task, stage)
        .unwrap()
        .answers
        .iter()
        .find(|a| !a.unparsed.is_empty())
        .unwrap();
    assert_eq!(answer.unparsed[criterion], raw);
    assert!(!answer.scores.contains_key(criterion));
}

fn answers_and_prompts_are_split_at_the_response_marker(dir: &Path, e: &Expected) {
    let import = read_study_dir(dir, &Rubric::default()).unwrap();
    let ids: Vec<String> = (1..=e.questions).map(|n| n.to_string()).collect();
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
        let got: Vec<&str> = f.answers.iter().map(|a| a.question.as_str()).collect();
        assert_eq!(got, ids, "{}", f.path.display());
    }
}

fn stored_import_gives_the_same_table_and_is_idempotent(dir: &Path, e: &Expected) {
    let import = read_study_dir(dir, &Rubric::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let sweep = SweepPaths::new(tmp.path(), "study");
    let run_for = |model: &str, task: &str| Some(format!("{model}-{task}-run"));
    let questions_for = |task: &str| task.to_owned();
    let rubric = Rubric::default();
    let target = StudyTarget {
        sweep: &sweep,
        rubric: &rubric,
        run_for: &run_for,
        questions_for: &questions_for,
    };
    let answers_total = e.files * e.questions;
    let report = store(&import, &target, "2025-01-09T00:00:00Z").unwrap();
    assert_eq!(report.answer_files.len(), e.files);
    assert_eq!(report.ratings_written, answers_total);
    let answers = qlab::rating::answers::read_answers(
        &sweep.run("qwen-2-7b-bio-run").answers("e3", "bio", "study"),
    )
    .unwrap();
    assert_eq!(answers.len(), e.questions);
    assert_eq!(answers[0].model, "qwen-2-7b");
    let (_, model) = e.holds;
    assert!(sweep.base_answers(model, "math", "study").is_file());

    let ratings = Ratings::replay(&journal::read(&sweep.ratings_journal(), &rubric).unwrap());
    assert_eq!(ratings.raters(), [STUDY_RATER]);
    let tasks = build(&ratings, &Rubric::default(), &[]);
    for (task, model, cells) in e.rows {
        let t = tasks.iter().find(|t| t.task == *task).unwrap();
        for (stage, (mean, _)) in STAGES.iter().zip(cells) {
            let cell = t.cell(model, stage).unwrap();
            assert_eq!(format!("{:.2}", cell.mean), *mean, "{model} {task} {stage}");
            assert_eq!(cell.n, e.questions);
        }
    }
    let e3 = |(task, model): (&str, &str)| {
        let t = tasks.iter().find(|t| t.task == task).unwrap();
        t.cell(model, "e3").unwrap().falls_after_e1
    };
    assert!(e3(e.falls), "{:?} e3 falls below e1", e.falls);
    assert!(!e3(e.holds), "{:?} e3 does not fall below e1", e.holds);

    let again = store(&import, &target, "2025-01-10T00:00:00Z").unwrap();
    assert_eq!(
        (again.ratings_written, again.ratings_unchanged),
        (0, answers_total)
    );
}

fn fixture_benchmarks() -> std::path::PathBuf {
    study_data::fixtures().join("seed-benchmarks")
}

#[test]
fn every_cell_is_reproduced_from_the_raw_files() {
    every_cell_is_reproduced(&fixture_benchmarks(), &FIXTURES);
}

#[test]
fn malformed_cells_are_reported_with_file_and_line_and_the_half_point_is_kept() {
    malformed_cells_are_reported_and_the_half_point_is_kept(&fixture_benchmarks(), &FIXTURES);
}

#[test]
fn answers_and_prompts_are_split_at_the_response_marker_in_every_file() {
    answers_and_prompts_are_split_at_the_response_marker(&fixture_benchmarks(), &FIXTURES);
}

#[test]
fn stored_import_gives_the_same_table_through_journal_and_results_and_is_idempotent() {
    stored_import_gives_the_same_table_and_is_idempotent(&fixture_benchmarks(), &FIXTURES);
}

// The same checks on the study's real files (opt-in: QLAB_STUDY_DATA names their directory).

#[test]
fn study_data_every_one_of_the_42_cells_is_reproduced() {
    let Some(data) = study_data::dir_or_skip("study_data_every_one_of_the_42_cells_is_reproduced")
    else {
        return;
    };
    every_cell_is_reproduced(&data.join("seed-benchmarks"), &STUDY);
}

#[test]
fn study_data_the_three_malformed_cells_are_reported_and_the_half_point_is_kept() {
    let Some(data) = study_data::dir_or_skip(
        "study_data_the_three_malformed_cells_are_reported_and_the_half_point_is_kept",
    ) else {
        return;
    };
    malformed_cells_are_reported_and_the_half_point_is_kept(&data.join("seed-benchmarks"), &STUDY);
}

#[test]
fn study_data_answers_and_prompts_are_split_at_the_response_marker() {
    let Some(data) =
        study_data::dir_or_skip("study_data_answers_and_prompts_are_split_at_the_response_marker")
    else {
        return;
    };
    answers_and_prompts_are_split_at_the_response_marker(&data.join("seed-benchmarks"), &STUDY);
}

#[test]
fn study_data_stored_import_gives_the_studys_table_and_is_idempotent() {
    let Some(data) = study_data::dir_or_skip(
        "study_data_stored_import_gives_the_studys_table_and_is_idempotent",
    ) else {
        return;
    };
    stored_import_gives_the_same_table_and_is_idempotent(&data.join("seed-benchmarks"), &STUDY);
}
