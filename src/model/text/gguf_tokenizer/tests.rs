//! GGUF tokenizers built from synthetic metadata: a SentencePiece vocabulary with byte fallback, and the
//! errors for metadata that is missing or of an unsupported kind.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;

use super::from_gguf_metadata;

/// pieces with (score, type): 1 normal, 2 unknown, 3 control, 6 byte.
const SPM: &[(&str, f32, i32)] = &[
    ("<unk>", 0.0, 2),
    ("<s>", 0.0, 3),
    ("</s>", 0.0, 3),
    ("<0x0A>", 0.0, 6),
    ("<0xC3>", 0.0, 6),
    ("<0xA9>", 0.0, 6),
    ("\u{2581}", -1.0, 1),
    ("h", -2.0, 1),
    ("e", -2.0, 1),
    ("l", -2.0, 1),
    ("o", -2.0, 1),
    ("w", -2.0, 1),
    ("r", -2.0, 1),
    ("d", -2.0, 1),
    ("ll", -3.0, 1),
    ("\u{2581}h", -3.5, 1),
    ("\u{2581}w", -3.6, 1),
    ("\u{2581}he", -4.0, 1),
    ("\u{2581}hell", -5.0, 1),
    ("\u{2581}hello", -6.0, 1),
    ("or", -7.0, 1),
];

fn strings(items: impl Iterator<Item = String>) -> Value {
    Value::Array(items.map(Value::String).collect())
}

fn spm_metadata() -> HashMap<String, Value> {
    let mut m = HashMap::new();
    m.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
    m.insert(
        "tokenizer.ggml.tokens".into(),
        strings(SPM.iter().map(|t| t.0.to_string())),
    );
    m.insert(
        "tokenizer.ggml.scores".into(),
        Value::Array(SPM.iter().map(|t| Value::F32(t.1)).collect()),
    );
    m.insert(
        "tokenizer.ggml.token_type".into(),
        Value::Array(SPM.iter().map(|t| Value::I32(t.2)).collect()),
    );
    m.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
    m.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(2));
    m.insert("tokenizer.ggml.unknown_token_id".into(), Value::U32(0));
    m
}

#[test]
fn sentencepiece_vocabularies_merge_by_score_with_byte_fallback() {
    let tok = from_gguf_metadata(&spm_metadata(), Path::new("tiny.gguf")).unwrap();
    let ids = tok.encode("hello world", true).unwrap();
    let pieces = tok.tokens(&ids);
    assert_eq!(
        pieces,
        ["<s>", "\u{2581}hello", "\u{2581}w", "or", "l", "d"]
    );
    assert_eq!(tok.decode(&ids, true).unwrap(), "hello world");
    let ids = tok.encode("hé\nh", false).unwrap();
    assert_eq!(
        tok.tokens(&ids),
        ["\u{2581}h", "<0xC3>", "<0xA9>", "<0x0A>", "h"]
    );
    assert_eq!(tok.decode(&ids, true).unwrap(), "hé\nh");
    assert_eq!(
        (tok.bos_token(), tok.eos_token()),
        (Some("<s>"), Some("</s>"))
    );
    assert_eq!(tok.stop_ids(), &[2]);
    assert_eq!(
        tok.encode("<s>hello", false).unwrap()[0],
        1,
        "control tokens are matched whole"
    );
}

#[test]
fn add_bos_false_and_no_space_prefix_are_honoured() {
    let mut meta = spm_metadata();
    meta.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(false));
    meta.insert("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false));
    let tok = from_gguf_metadata(&meta, Path::new("tiny.gguf")).unwrap();
    let ids = tok.encode("hello", true).unwrap();
    assert_eq!(tok.tokens(&ids), ["h", "e", "ll", "o"]);
    assert_eq!(tok.decode(&ids, false).unwrap(), "hello");
}

#[test]
fn missing_or_unsupported_metadata_is_named() {
    let mut meta = spm_metadata();
    meta.remove("tokenizer.ggml.tokens");
    let err = from_gguf_metadata(&meta, Path::new("m.gguf"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("m.gguf") && err.contains("tokenizer.ggml.tokens"),
        "{err}"
    );
    let mut meta = spm_metadata();
    meta.insert("tokenizer.ggml.model".into(), Value::String("bert".into()));
    let err = from_gguf_metadata(&meta, Path::new("m.gguf"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"bert\"") && err.contains("gpt2"), "{err}");
    let mut meta = spm_metadata();
    meta.insert("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
    meta.insert(
        "tokenizer.ggml.merges".into(),
        strings(std::iter::once("h e".to_string())),
    );
    meta.insert("tokenizer.ggml.pre".into(), Value::String("martian".into()));
    let err = from_gguf_metadata(&meta, Path::new("m.gguf"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tokenizer.ggml.pre") && err.contains("martian"),
        "{err}"
    );
}
