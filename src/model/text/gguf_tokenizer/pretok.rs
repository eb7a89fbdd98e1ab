//! The pre-tokenizer each `tokenizer.ggml.pre` value stands for, as in the model's own tokenizer.json.

use std::path::Path;

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::model::text::tokenizer::TokenizerError;

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const SUPPORTED: &str = "smollm, gpt2, default, llama-bpe, llama3, qwen2";

/// Llama 3's tokenizer.json sets `ignore_merges`: whole words in the vocabulary are taken as they are.
pub(super) fn ignores_merges(pre: &str) -> bool {
    matches!(pre, "llama-bpe" | "llama3")
}

pub(super) fn for_pre_type(pre: &str, path: &Path) -> Result<PreTokenizerWrapper, TokenizerError> {
    let split = |pattern: &str| -> Result<PreTokenizerWrapper, TokenizerError> {
        Split::new(
            SplitPattern::Regex(pattern.to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map(Into::into)
        .map_err(|e| TokenizerError::Codec(e.to_string()))
    };
    Ok(match pre {
        "smollm" => Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])
        .into(),
        "gpt2" | "default" => ByteLevel::new(false, true, true).into(),
        "llama-bpe" | "llama3" => Sequence::new(vec![
            split(LLAMA3_SPLIT)?,
            ByteLevel::new(false, true, false).into(),
        ])
        .into(),
        "qwen2" => Sequence::new(vec![
            split(QWEN2_SPLIT)?,
            ByteLevel::new(false, false, false).into(),
        ])
        .into(),
        other => {
            return Err(TokenizerError::Unsupported {
                path: path.to_owned(),
                what: "tokenizer.ggml.pre",
                found: other.to_owned(),
                supported: SUPPORTED,
            });
        }
    })
}
