//! Files a config names that would fail only after minutes of training, or abort the process: datasets,
//! question sets and model files. `qlab validate` (and `qlab run` before any work) refuses each with exit 2
//! and a line naming the file and the place.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

fn llama_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama")
}

const ROWS: &str =
    "{\"question\": \"1+1?\", \"answer\": \"2\"}\n{\"question\": \"2+2?\", \"answer\": \"4\"}\n";
const QUESTIONS: &str =
    "id = \"qa\"\n[[question]]\nid = \"1\"\nquestion = \"3+3?\"\nreference = \"6\"\n";

/// A sweep in `dir`: the llama fixture as its model, `rows` as its data, `questions` as its question set,
/// and `extra` TOML at the end.
fn sweep(dir: &Path, model: &Path, rows: &str, questions: &str, extra: &str) -> PathBuf {
    std::fs::write(dir.join("qa.jsonl"), rows).unwrap();
    std::fs::write(dir.join("qa-questions.toml"), questions).unwrap();
    let toml = format!(
        "[sweep]\ndevice = \"cpu\"\n\n[[model]]\nid = \"tiny\"\npath = {model:?}\n\n[[dataset]]\nid = \"qa\"\n\
         path = \"qa.jsonl\"\ntemplate = \"{{question}}\\n### Response:\\n{{answer}}\"\n\
         questions = \"qa-questions.toml\"\n\n[matrix]\nmodels = [\"tiny\"]\ndatasets = [\"qa\"]\n{extra}\n"
    );
    let path = dir.join("cfg.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn validate(config: &Path) -> (i32, String) {
    let out = Command::cargo_bin("qlab")
        .unwrap()
        .arg("validate")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_fixture_sweep_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = sweep(dir.path(), &llama_fixture(), ROWS, QUESTIONS, "");
    let (code, stderr) = validate(&cfg);
    assert_eq!(code, 0, "{stderr}");
}

/// (what, rows, questions, extra TOML, a line stderr must hold; `{cfg}` / `{dir}` stand for the paths).
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

const CASES: &[Case] = &[
    (
        "template fields the data lacks: one error at the template, not one per row",
        "{\"q\": \"1+1?\", \"a\": \"2\"}\n{\"q\": \"2+2?\", \"a\": \"4\"}\n{\"q\": \"3\", \"a\": \"3\"}\n",
        QUESTIONS,
        "",
        "{cfg}:11:12: dataset `qa`: the template's `{answer}` reads column `answer`, which no row of {dir}/qa.jsonl has (its columns: a, q)",
    ),
    (
        "a column that holds no text in any row",
        "{\"question\": \"1+1?\", \"answer\": null}\n",
        QUESTIONS,
        "",
        "{cfg}:11:12: dataset `qa`: the template's `{answer}` reads column `answer`, which holds no text in any row",
    ),
    (
        "bad rows that would stop training",
        "{\"question\": \"1+1?\", \"answer\": \"2\"}\n{\"question\": \"2+2?\"}\n{oops\n",
        QUESTIONS,
        "",
        "{cfg}:10:8: dataset `qa`: 2 bad row(s) in {dir}/qa.jsonl would stop training (set on_bad_row = \"skip\" to skip them): row 2: field `answer` is missing; row 3: not valid JSON",
    ),
    (
        "an empty dataset",
        "\n\n",
        QUESTIONS,
        "",
        "{cfg}:10:8: dataset `qa`: {dir}/qa.jsonl has no rows",
    ),
    (
        "a question file that does not parse",
        ROWS,
        "id = \"qa\"\n[[question]]\nid = \"1\"\nquestion = \"3+3?\nreference = \"6\"\n",
        "",
        "{dir}/qa-questions.toml:4:",
    ),
    (
        "a question set with no question",
        ROWS,
        "id = \"qa\"\n",
        "",
        "{dir}/qa-questions.toml: no [[question]] in the file",
    ),
    (
        "questions without the eval prompt's field",
        ROWS,
        "[[question]]\nid = \"1\"\ninstruction = \"Add.\"\ninput = \"3+3\"\nreference = \"6\"\n",
        "",
        "{cfg}:11:12: dataset `qa`: the eval prompt uses `{question}`, which 1 of the 1 questions in {dir}/qa-questions.toml lack",
    ),
    (
        "a question set whose id cannot name a file",
        ROWS,
        "id = \"..\"\n[[question]]\nid = \"1\"\nquestion = \"3+3?\"\nreference = \"6\"\n",
        "",
        "{cfg}:12:13: {dir}/qa-questions.toml: the question set's id `..` is not usable as a directory name",
    ),
    (
        "a LoRA rank larger than the model's projections",
        ROWS,
        QUESTIONS,
        "[lora]\nr = 64",
        "{cfg}:18:5: `r` = 64 is larger than model `tiny`'s k_proj projection (64 x 32): a rank can be at most 32 (cell tiny x qa)",
    ),
    (
        "a training step no machine can hold",
        ROWS,
        QUESTIONS,
        "[train]\nmax_seq_len = 1000000\nbatch_size = 64",
        "{cfg}:18:15: training needs about",
    ),
    (
        "answers no machine can hold",
        ROWS,
        QUESTIONS,
        "[eval]\nbatch_size = 1000000\nmax_new_tokens = 1000000",
        "{cfg}:19:18: answering needs about",
    ),
];

#[test]
fn bad_data_and_question_files_are_refused_up_front() {
    let mut failures = Vec::new();
    for (what, rows, questions, extra, want) in CASES {
        let dir = tempfile::tempdir().unwrap();
        let cfg = sweep(dir.path(), &llama_fixture(), rows, questions, extra);
        let want = want
            .replace("{cfg}", &cfg.display().to_string())
            .replace("{dir}", &dir.path().display().to_string());
        let (code, stderr) = validate(&cfg);
        if code != 2 || !stderr.lines().any(|l| l.starts_with(&want)) {
            failures.push(format!(
                "{what}: exit {code}, wanted `{want}`, got:\n{stderr}"
            ));
        }
        if what.contains("one error") && stderr.matches("reads column").count() != 2 {
            failures.push(format!("{what}: one line per field expected:\n{stderr}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_dataset_that_never_ends_is_an_error_naming_it_not_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = sweep(dir.path(), &llama_fixture(), ROWS, QUESTIONS, "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "path = \"qa.jsonl\"",
        "path = \"/dev/zero\"\nformat = \"jsonl\"",
    );
    std::fs::write(&cfg, text).unwrap();
    let (code, stderr) = validate(&cfg);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("/dev/zero, row 1: runs past 64 MiB without a newline"),
        "{stderr}"
    );
}

/// A GGUF header: magic, version 3, then the given counts and bytes.
fn gguf(tensors: u64, entries: u64, rest: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(tensors.to_le_bytes());
    b.extend(entries.to_le_bytes());
    b.extend(rest);
    b
}

#[test]
fn damaged_model_files_are_named_before_anything_is_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let mut huge_key = (1u64 << 62).to_le_bytes().to_vec();
    huge_key.extend([0; 32]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "tensors.gguf",
            gguf(u64::MAX, 0, &[]),
            "the tensor count at byte 8 is",
        ),
        (
            "entries.gguf",
            gguf(0, 1 << 50, &[]),
            "the metadata count at byte 16 is",
        ),
        (
            "key.gguf",
            gguf(0, 1, &huge_key),
            "the length of a metadata key at byte 24 is",
        ),
        (
            "magic.gguf",
            b"GGML\x03\0\0\0".to_vec(),
            "the file does not start with `GGUF`",
        ),
    ];
    for (name, bytes, want) in cases {
        let model = dir.path().join(name);
        std::fs::write(&model, bytes).unwrap();
        let cfg = sweep(dir.path(), &model, ROWS, QUESTIONS, "");
        let (code, stderr) = validate(&cfg);
        assert_eq!(code, 2, "{name}: {stderr}");
        let line = format!(
            "model `tiny`: {}: cannot parse: not a valid GGUF header: {want}",
            model.display()
        );
        assert!(stderr.contains(&line), "{name}: wanted {line}\n{stderr}");
    }
    let absurd = dir.path().join("absurd");
    std::fs::create_dir(&absurd).unwrap();
    let config = std::fs::read_to_string(llama_fixture().join("config.json"))
        .unwrap()
        .replace("\"hidden_size\": 64", "\"hidden_size\": 1000000000");
    std::fs::write(absurd.join("config.json"), config).unwrap();
    let cfg = sweep(dir.path(), &absurd, ROWS, QUESTIONS, "");
    let (code, stderr) = validate(&cfg);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("hidden size 1000000000 is outside 1..=131072"),
        "{stderr}"
    );
}

#[test]
fn run_refuses_before_any_work_starts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = sweep(
        dir.path(),
        &llama_fixture(),
        ROWS,
        QUESTIONS,
        "[lora]\nr = 64",
    );
    let out = Command::cargo_bin("qlab")
        .unwrap()
        .arg("run")
        .arg(&cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("`r` = 64 is larger than"), "{stderr}");
    assert!(!stderr.contains("Location:"), "{stderr}");
    assert!(
        !dir.path().join("runs").exists(),
        "no run directory is made"
    );
}

#[test]
fn on_bad_row_skip_skips_a_malformed_line_too() {
    let dir = tempfile::tempdir().unwrap();
    let rows = "{\"question\": \"1+1?\", \"answer\": \"2\"}\n{oops\n[1, 2]\n";
    let cfg = sweep(dir.path(), &llama_fixture(), rows, QUESTIONS, "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "path = \"qa.jsonl\"",
        "path = \"qa.jsonl\"\non_bad_row = \"skip\"",
    );
    std::fs::write(&cfg, text).unwrap();
    let (code, stderr) = validate(&cfg);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn question_sets_and_chat_templates_that_never_end_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = sweep(dir.path(), &llama_fixture(), ROWS, QUESTIONS, "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("\"qa-questions.toml\"", "\"/dev/zero\"")).unwrap();
    let (code, stderr) = validate(&cfg);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("/dev/zero: larger than 64 MiB: not a question set"),
        "{stderr}"
    );
    // The first `path` is the model's.
    let with_template = text.replacen("path = ", "chat_template = \"/dev/zero\"\npath = ", 1);
    std::fs::write(&cfg, with_template).unwrap();
    let (code, stderr) = validate(&cfg);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("model `tiny`: chat template /dev/zero: ")
            && stderr.contains("larger than 64 MiB"),
        "{stderr}"
    );
}
