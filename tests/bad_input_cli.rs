//! Bad flags and outputs: every command answers a user's mistake with exit 2 and plain lines (`error: --flag
//! ...` as clap says it, or `PATH...: message`), never color-eyre's report with its `Location:` and
//! backtrace hints. `qlab generate` checks its sampling flags as the config checks `[eval]`; outputs that
//! exist are replaced only with `--force`.

use std::path::Path;

use assert_cmd::Command;

const CONFIG: &str = "[sweep]\ndevice = \"cpu\"\n[[model]]\nid = \"tiny\"\npath = \"tiny.gguf\"\n[[dataset]]\nid = \"qa\"\n\
path = \"qa.jsonl\"\ntemplate = \"{question}\\n### Response:\\n{answer}\"\n[matrix]\nmodels = [\"tiny\"]\n\
datasets = [\"qa\"]\n";

/// (exit code, stderr) of `qlab ARGS` run in `dir`.
fn qlab(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::cargo_bin("qlab")
        .unwrap()
        .current_dir(dir)
        .env("QLAB_OFFLINE", "1")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (what, args, the start of the one line stderr must hold).
const CASES: &[(&str, &[&str], &str)] = &[
    (
        "negative temperature",
        &[
            "generate",
            "--model",
            "demo",
            "--prompt",
            "x",
            "--temperature=-1",
        ],
        "error: --temperature: `temperature` must not be negative",
    ),
    (
        "NaN temperature",
        &[
            "generate",
            "--model",
            "demo",
            "--prompt",
            "x",
            "--temperature",
            "nan",
        ],
        "error: --temperature: `temperature` must be a finite number",
    ),
    (
        "infinite temperature",
        &[
            "generate",
            "--model",
            "demo",
            "--prompt",
            "x",
            "--temperature",
            "inf",
        ],
        "error: --temperature: `temperature` must be a finite number",
    ),
    (
        "top-p of 0",
        &[
            "generate", "--model", "demo", "--prompt", "x", "--top-p", "0",
        ],
        "error: --top-p: `top_p` must be in (0, 1], got 0",
    ),
    (
        "top-p above 1",
        &[
            "generate", "--model", "demo", "--prompt", "x", "--top-p", "2",
        ],
        "error: --top-p: `top_p` must be in (0, 1], got 2",
    ),
    (
        "NaN top-p",
        &[
            "generate", "--model", "demo", "--prompt", "x", "--top-p", "nan",
        ],
        "error: --top-p: `top_p` must be in (0, 1], got NaN",
    ),
    (
        "no new tokens",
        &[
            "generate",
            "--model",
            "demo",
            "--prompt",
            "x",
            "--max-new-tokens",
            "0",
        ],
        "error: --max-new-tokens: `max_new_tokens` must be at least 1",
    ),
    (
        "endless new tokens",
        &[
            "generate",
            "--model",
            "demo",
            "--prompt",
            "x",
            "--max-new-tokens",
            "4000000000",
        ],
        "error: --max-new-tokens: `max_new_tokens` 4000000000 is beyond",
    ),
    (
        "a model path that is not there",
        &["generate", "--model", "no/such.gguf", "--prompt", "x"],
        "model no/such.gguf: model path no/such.gguf does not exist",
    ),
    (
        "a model file that never ends",
        &["generate", "--model", "/dev/zero", "--prompt", "x"],
        "/dev/zero: neither a model file nor a model directory",
    ),
    (
        "a config model that is not there",
        &[
            "generate", "--config", "cfg.toml", "--model", "nope", "--prompt", "x",
        ],
        "cfg.toml: no [[model]] with id \"nope\" (ids: tiny)",
    ),
    (
        "an unknown run to train",
        &["run", "cfg.toml", "--only", "nope"],
        "error: --only: ",
    ),
    (
        "a GPU listed twice",
        &["run", "cfg.toml", "--devices", "cuda:0,cuda:0"],
        "error: --devices: `cuda:0` is listed twice",
    ),
    (
        "a device that is none",
        &["run", "cfg.toml", "--devices", "gpu"],
        "error: invalid value 'gpu'",
    ),
    (
        "an unknown run to answer",
        &["eval", "cfg.toml", "--only", "nope"],
        "error: --only: no run \"nope\"",
    ),
    (
        "an unknown run to export",
        &[
            "export", "adapter", "nope", "--out", "o", "--config", "cfg.toml",
        ],
        "error: no run \"nope\" in cfg.toml",
    ),
    (
        "export without a destination",
        &["export", "results", "--config", "cfg.toml"],
        "error: say where to write",
    ),
    (
        "export over an existing file",
        &[
            "export",
            "results",
            "--config",
            "cfg.toml",
            "--md",
            "exists.md",
        ],
        "error: exists.md already exists: choose a new file, or pass --force to replace it",
    ),
    (
        "questions over an existing file",
        &["import-questions", "q.txt", "--out", "exists.md"],
        "error: exists.md already exists",
    ),
    (
        "demo data over an existing file",
        &["demo-data", "--out", "exists.md"],
        "error: exists.md already exists",
    ),
    (
        "no demo rows",
        &["demo-data", "--out", "new.jsonl", "--rows", "0"],
        "error: --rows: must be at least 1",
    ),
    (
        "a question list that never ends",
        &["import-questions", "/dev/zero"],
        "/dev/zero: larger than 64 MiB: not a question list",
    ),
    (
        "a study folder with nothing in it",
        &["import-study", ".", "--config", "cfg.toml"],
        ".: no study benchmark files",
    ),
    (
        "a generate benchmark without a model",
        &["bench", "generate", "--batch", "2"],
        "error: --preset/--model: give either --preset NAME --random-weights or --model PATH",
    ),
    (
        "a generate benchmark of one new token",
        &[
            "bench",
            "generate",
            "--preset",
            "smollm2-135m",
            "--random-weights",
            "--new",
            "1",
        ],
        "need --batch >= 1, --prompt >= 1, --new >= 2",
    ),
    (
        "a generate benchmark of an unknown preset",
        &["bench", "generate", "--preset", "gpt-9", "--random-weights"],
        "unknown preset `gpt-9`; expected one of smollm2-135m,",
    ),
    (
        "a generate benchmark in an unknown storage",
        &["bench", "generate", "--model", "m.gguf", "--quant", "q3"],
        "error: --quant: unknown `q3`",
    ),
    (
        "a training benchmark with an empty loss chunk",
        &[
            "bench",
            "train",
            "--preset",
            "smollm2-135m",
            "--random-weights",
            "--loss-chunk",
            "0",
        ],
        "error: invalid value '0' for '--loss-chunk <LOSS_CHUNK>': 0 is not in 1..",
    ),
    (
        "an unknown stage pair",
        &["rate", "cfg.toml", "--pair", "base-base"],
        "error: invalid value 'base-base'",
    ),
];

#[test]
fn bad_flags_and_outputs_exit_2_with_one_plain_style() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cfg.toml"), CONFIG).unwrap();
    std::fs::write(dir.path().join("exists.md"), "keep me").unwrap();
    std::fs::write(
        dir.path().join("q.txt"),
        "1Question\nWhat?\nAnswer\nThat.\n",
    )
    .unwrap();
    let mut failures = Vec::new();
    for (what, args, want) in CASES {
        let (code, stderr) = qlab(dir.path(), args);
        let shown = !stderr.contains("Location:") && !stderr.contains("BACKTRACE");
        if code != 2 || !stderr.lines().any(|l| l.starts_with(want)) || !shown {
            failures.push(format!(
                "{what} (qlab {}): exit {code}\n{stderr}",
                args.join(" ")
            ));
        }
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("exists.md")).unwrap(),
        "keep me"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn force_replaces_an_existing_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("arith.jsonl");
    std::fs::write(&out, "old").unwrap();
    let (code, stderr) = qlab(
        dir.path(),
        &["demo-data", "--out", "arith.jsonl", "--force"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(std::fs::read_to_string(&out).unwrap().starts_with('{'));
}

#[test]
fn an_internal_failure_keeps_the_full_report() {
    // Not the user's input: a sweep directory that cannot be made (its parent is a file) is qlab's failure
    // to report in full, with exit 1.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("runs"), "a file, not a directory").unwrap();
    std::fs::write(dir.path().join("cfg.toml"), CONFIG).unwrap();
    let (code, stderr) = qlab(
        dir.path(),
        &[
            "export",
            "results",
            "--config",
            "cfg.toml",
            "--md",
            "runs/x.md",
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.starts_with("Error:"), "{stderr}");
}
