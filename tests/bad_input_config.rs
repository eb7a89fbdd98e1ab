//! Configs that are legal TOML but absurd: each is refused by `qlab validate` with exit 2 and one located
//! line naming the file, line and column, and by every other command that reads a config the same way.

use std::path::Path;

use assert_cmd::Command;

const BASE: &str = "[[model]]\nid = \"tiny\"\npath = \"tiny.gguf\"\n\n[[dataset]]\nid = \"qa\"\npath = \"qa.jsonl\"\n\
template = \"{question}\\n### Response:\\n{answer}\"\n\n[matrix]\nmodels = [\"tiny\"]\ndatasets = [\"qa\"]\n";

/// (what, TOML added to the base config, the located message expected: `LINE:COL: message` prefix).
const CASES: &[(&str, &str, &str)] = &[
    (
        "infinite alpha",
        "[lora]\nalpha = inf",
        "15:9: `alpha` must be positive, got inf",
    ),
    (
        "NaN dropout",
        "[lora]\ndropout = nan",
        "15:11: `dropout` must be a finite number, got NaN",
    ),
    (
        "negative rank",
        "[lora]\nr = -3",
        "15:5: `r` must be a positive integer, got -3",
    ),
    (
        "infinite lr",
        "[train]\nlr = inf",
        "15:6: `lr` must be positive, got inf",
    ),
    (
        "NaN weight decay",
        "[train]\nweight_decay = nan",
        "15:16: `weight_decay` must be a finite number",
    ),
    (
        "-inf grad norm",
        "[train]\nmax_grad_norm = -inf",
        "15:17: `max_grad_norm` must be a finite number",
    ),
    (
        "NaN warmup ratio",
        "[train]\nwarmup_ratio = nan",
        "15:16: `warmup_ratio` must be a finite number",
    ),
    (
        "zero batch",
        "[train]\nbatch_size = 0",
        "15:14: `batch_size` must be at least 1",
    ),
    (
        "negative batch",
        "[train]\nbatch_size = -1",
        "15:14: invalid value: integer `-1`",
    ),
    (
        "zero grad accum",
        "[train]\ngrad_accum = 0",
        "15:14: `grad_accum` must be at least 1",
    ),
    (
        "zero epochs",
        "[train]\nepochs = 0\neval_at_epochs = []",
        "15:10: `epochs` must be at least 1",
    ),
    (
        "zero warmup steps",
        "[train]\nwarmup_steps = 0",
        "15:16: `warmup_steps` must be at least 1",
    ),
    (
        "endless sequences",
        "[train]\nmax_seq_len = 100000000",
        "15:15: `max_seq_len` 100000000 is beyond",
    ),
    (
        "NaN temperature",
        "[eval]\ntemperature = nan",
        "15:15: `temperature` must be a finite number",
    ),
    (
        "infinite temperature",
        "[eval]\ntemperature = inf",
        "15:15: `temperature` must be a finite number",
    ),
    (
        "NaN top_p",
        "[eval]\ntop_p = nan",
        "15:9: `top_p` must be in (0, 1], got NaN",
    ),
    (
        "zero new tokens",
        "[eval]\nmax_new_tokens = 0",
        "15:18: `max_new_tokens` must be at least 1",
    ),
    (
        "endless answers",
        "[eval]\nmax_new_tokens = 1000000000",
        "15:18: `max_new_tokens` 1000000000 is beyond",
    ),
    (
        "zero eval batch",
        "[eval]\nbatch_size = 0",
        "15:14: `batch_size` must be at least 1",
    ),
    (
        "infinite rubric",
        "[rubric]\nmax = inf",
        "15:7: `max` must be a finite number",
    ),
    (
        "zero rubric step",
        "[rubric]\nstep = 0",
        "15:8: `step` must be 1 (whole points) or 0.5",
    ),
    (
        "empty criterion",
        "[rubric]\ncriteria = [\"\"]",
        "15:12: a criterion has an empty name",
    ),
    (
        "sweep named .",
        "[sweep]\nname = \".\"",
        "15:8: sweep name `.` is not usable as a directory name",
    ),
    (
        "sweep named ..",
        "[sweep]\nname = \"..\"",
        "15:8: sweep name `..` is not usable",
    ),
    (
        "empty runs dir",
        "[sweep]\nruns_dir = \"\"",
        "15:12: `runs_dir` must name a directory",
    ),
    (
        "zero limit",
        "[[dataset]]\nid = \"b\"\npath = \"b.jsonl\"\ntemplate = \"{q}### Response:\\n{a}\"\nlimit = 0",
        "18:9: `limit` must be at least 1",
    ),
    (
        "NaN in an override",
        "[[override]]\nmodel = \"tiny\"\ntrain = { lr = nan }",
        "16:16: `lr` must be positive, got NaN (cell tiny x qa)",
    ),
];

fn validate(dir: &Path, toml: &str) -> (i32, String) {
    let path = dir.join("cfg.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::cargo_bin("qlab")
        .unwrap()
        .arg("validate")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn absurd_values_are_refused_by_validate_each_at_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (what, extra, want) in CASES {
        let (code, stderr) = validate(dir.path(), &format!("{BASE}\n{extra}\n"));
        let want = format!("{}:{want}", dir.path().join("cfg.toml").display());
        if code != 2 || !stderr.lines().any(|l| l.starts_with(&want)) {
            failures.push(format!(
                "{what}: exit {code}, wanted `{want}`, got:\n{stderr}"
            ));
        }
        if stderr.contains("Location:") || stderr.contains("BACKTRACE") {
            failures.push(format!(
                "{what}: a backtrace hint for a user's mistake:\n{stderr}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn names_too_long_for_a_file_name_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let long = "m".repeat(300);
    let toml = BASE
        .replace("id = \"tiny\"", &format!("id = \"{long}\""))
        .replace("models = [\"tiny\"]", &format!("models = [\"{long}\"]"));
    let (code, stderr) = validate(dir.path(), &toml);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("cfg.toml:2:6: id is 300 bytes long; at most 100"),
        "{stderr}"
    );
    // A sweep named after its file: a file stem of `.` cannot name the sweep's directory.
    let dotted = dir.path().join("..toml");
    std::fs::write(&dotted, BASE).unwrap();
    let out = Command::cargo_bin("qlab")
        .unwrap()
        .arg("validate")
        .arg(&dotted)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("sweep name `.`"), "{stderr}");
}

#[test]
fn every_command_that_reads_a_config_exits_2_with_the_same_located_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cfg.toml");
    std::fs::write(&path, format!("{BASE}\n[train]\nlr = inf\n")).unwrap();
    let cfg = path.to_str().unwrap();
    let want = format!("{cfg}:15:6: `lr` must be positive, got inf");
    let commands: &[&[&str]] = &[
        &["validate", cfg],
        &["plan", cfg],
        &["status", cfg],
        &["run", cfg],
        &["eval", cfg],
        &["results", cfg],
        &["rate", cfg],
        &[
            "generate", "--config", cfg, "--model", "tiny", "--prompt", "hi",
        ],
        &["export", "results", "--config", cfg, "--md", "out.md"],
        &["export", "adapter", "x", "--out", "o", "--config", cfg],
        &["import-study", ".", "--config", cfg],
    ];
    let mut failures = Vec::new();
    for args in commands {
        let out = Command::cargo_bin("qlab")
            .unwrap()
            .current_dir(dir.path())
            .args(*args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let plain = !stderr.contains("Location:") && !stderr.contains("Error:");
        if out.status.code() != Some(2) || !stderr.contains(&want) || !plain {
            failures.push(format!(
                "qlab {}: exit {:?}\n{stderr}",
                args.join(" "),
                out.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_config_that_never_ends_is_refused_not_read_into_memory() {
    let out = Command::cargo_bin("qlab")
        .unwrap()
        .args(["validate", "/dev/zero"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("/dev/zero: larger than 64 MiB: not a config"),
        "{stderr}"
    );
}
