//! Helpers shared by the integration tests that drive the real binary: a tmux session to type into and
//! read from, and a small sweep with answers to rate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use qlab::config::Config;
use qlab::plan::Plan;
use qlab::rating::answers::{AnswerRecord, write_answers};
use qlab::store::SweepPaths;

/// A tmux session killed on drop, on a tmux server of its own (`-L`): tests start sessions in parallel, and a
/// shared server can be exiting (its last session gone) just as another test connects to it.
pub struct Tmux {
    session: String,
    /// The server's socket file, removed on drop (tmux leaves it behind after kill-server).
    socket: String,
}

impl Tmux {
    pub fn available() -> bool {
        Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// A detached session of `size` (columns, rows) running `cmd`.
    pub fn start(name: &str, cmd: &str, size: (u16, u16)) -> Tmux {
        let session = format!("qlab-e2e-{name}-{}", std::process::id());
        let ok = tmux(&session)
            .args(["new-session", "-d", "-s", &session, "-x"])
            .arg(size.0.to_string())
            .arg("-y")
            .arg(size.1.to_string())
            .arg(cmd)
            .env("TERM", "xterm-256color")
            .status()
            .unwrap()
            .success();
        assert!(ok, "tmux new-session failed");
        let mut tmux = Tmux {
            session,
            socket: String::new(),
        };
        tmux.socket = tmux.display("#{socket_path}");
        tmux
    }

    /// Send one key (tmux key name or text); a pause after it keeps Esc from merging with the next key.
    pub fn send(&self, key: &str) {
        let ok = tmux(&self.session)
            .args(["send-keys", "-t", &self.session, key])
            .status()
            .unwrap();
        assert!(ok.success(), "tmux send-keys {key} failed");
        std::thread::sleep(Duration::from_millis(300));
    }

    pub fn capture(&self) -> String {
        let out = tmux(&self.session)
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A tmux format about the pane, e.g. `#{alternate_on}` or `#{pane_pid}`.
    pub fn display(&self, format: &str) -> String {
        let out = tmux(&self.session)
            .args(["display", "-p", "-t", &self.session, format])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Poll the pane until `pred` holds (generous timeouts: CI machines are slow).
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.capture();
            if pred(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}; the pane shows:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// `tmux` on the server named after `session`.
fn tmux(session: &str) -> Command {
    let mut c = Command::new("tmux");
    c.args(["-L", session]);
    c
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Quietly: the session is already gone when its program was killed.
        let _ = tmux(&self.session).arg("kill-server").output();
        if !self.socket.is_empty() {
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}

/// A sweep (`rate.toml`, sweep `rate-test`) with one run, two math questions and base and e1 answers.
pub fn rating_sweep(dir: &Path) -> PathBuf {
    let config = dir.join("rate.toml");
    let toml = r####"
[sweep]
name = "rate-test"

[[model]]
id = "tiny"
path = "tiny.gguf"

[[dataset]]
id = "sums"
task = "math"
path = "sums.jsonl"
template = "### Input:\n{question}\n\n### Response:\n{answer}"
questions = "sums.toml"

[train]
epochs = 1
eval_at_epochs = [1]

[matrix]
models = ["tiny"]
datasets = ["sums"]
"####;
    std::fs::write(&config, toml).unwrap();
    let questions = r#"
id = "sums"
task = "math"

[[question]]
id = "1"
question = "Add 2 and 3."
reference = "2 + 3 = 5"

[[question]]
id = "2"
question = "Add 4 and 4."
reference = "4 + 4 = 8"
"#;
    std::fs::write(dir.join("sums.toml"), questions).unwrap();
    let cfg = Config::load(&config).unwrap();
    let run = &Plan::from_config(&cfg).runs[0];
    let sweep = SweepPaths::new(&cfg.runs_dir(), &cfg.sweep.name);
    let answer = |q: &str, stage: &str, text: &str| AnswerRecord {
        question_id: q.into(),
        stage: stage.into(),
        model: "tiny".into(),
        prompt: String::new(),
        answer: text.into(),
        new_tokens: Some(5),
        secs: Some(0.1),
    };
    write_answers(
        &sweep.base_answers("tiny", "sums", &run.eval_hash),
        &[
            answer("1", "base", "It is 6."),
            answer("2", "base", "It is 8."),
        ],
    )
    .unwrap();
    write_answers(
        &sweep.run(&run.id).answers("e1", "sums", &run.eval_hash),
        &[
            answer("1", "e1", "2 + 3 = 5"),
            answer("2", "e1", "4 + 4 = 9"),
        ],
    )
    .unwrap();
    config
}

/// Where the study-format data lives: the project's own fixtures, always there, and the study's real files,
/// checked only when `QLAB_STUDY_DATA` names their directory (the study's repository is not part of a clone).
#[allow(dead_code)] // not every test binary that includes `common` reads study data
pub mod study_data {
    use std::io::Write;
    use std::path::{Path, PathBuf};

    /// The variable naming the study's data directory (`seed-questions/`, `seed-benchmarks/`).
    pub const VAR: &str = "QLAB_STUDY_DATA";

    /// The fixtures in the study's formats, laid out like the study's data directory.
    pub fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/study")
    }

    /// The directory `QLAB_STUDY_DATA` names (a relative path is taken from the checkout), or `None` after
    /// telling that `test` was skipped and why. The line goes straight to stderr, past the test harness's
    /// capture, so that a plain `cargo test` shows it.
    pub fn dir_or_skip(test: &str) -> Option<PathBuf> {
        let Some(value) = std::env::var_os(VAR).filter(|v| !v.is_empty()) else {
            let _ = writeln!(
                std::io::stderr(),
                "skipped {test}: set {VAR} to the study's data directory (seed-questions/, \
                 seed-benchmarks/; CI uses ../shared/data, the README says how to lay it out) to run \
                 this check against the study's own files"
            );
            return None;
        };
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(value);
        assert!(
            dir.join("seed-questions").is_dir() && dir.join("seed-benchmarks").is_dir(),
            "{VAR}={}: expected the study's data directory, holding seed-questions/ and seed-benchmarks/",
            dir.display()
        );
        Some(dir)
    }
}

/// The words of the toy sums, besides the numbers 0-39.
#[allow(dead_code)] // not every test binary that includes `common` builds a model
pub const WORDS: [&str; 4] = ["Q", "A", ":", "plus"];

/// The tokenizer.json of the tiny word-level test models: the words of the toy sums and the numbers 0-39.
#[allow(dead_code)] // not every test binary that includes `common` builds a model
pub fn tokenizer_json() -> String {
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["<unk>", "<s>", "</s>"]
        .iter()
        .chain(WORDS.iter())
        .enumerate()
    {
        vocab.insert(t.to_string(), i.into());
    }
    for n in 0..40 {
        vocab.insert(n.to_string(), (7 + n).into());
    }
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
    .to_string()
}

/// `dir/model`: the tiny random Llama fixture (config and weights) with the word-level tokenizer.
#[allow(dead_code)] // not every test binary that includes `common` builds a model
pub fn tiny_word_model(dir: &Path) -> PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama");
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), model.join(f)).unwrap();
    }
    std::fs::write(model.join("tokenizer.json"), tokenizer_json()).unwrap();
    model
}
