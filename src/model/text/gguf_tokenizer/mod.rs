//! The tokenizer embedded in a GGUF file, rebuilt as a `tokenizers` tokenizer that matches the original:
//! byte-level BPE (`tokenizer.ggml.model = "gpt2"`: SmolLM2, Llama 3, Qwen2) from tokens + merges with the
//! pre-tokenizer its `tokenizer.ggml.pre` names, and SentencePiece vocabularies (`"llama"`: Llama 2, Mistral,
//! Gemma) as a byte-fallback BPE whose merges come from the pieces' scores, as transformers converts them.

mod meta;
mod pretok;
mod spm;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, decoders::byte_level::ByteLevel};

use super::tokenizer::{Tokenizer, TokenizerError};
use meta::Meta;

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;

/// Read only the metadata of a GGUF file and build its tokenizer.
pub fn from_gguf_file(path: &Path) -> Result<Tokenizer, TokenizerError> {
    let invalid = |reason: String| TokenizerError::Invalid {
        path: path.to_owned(),
        reason,
    };
    crate::store::gguf_header::check(path).map_err(invalid)?;
    let mut file = std::fs::File::open(path).map_err(|e| invalid(e.to_string()))?;
    let content =
        Content::read(&mut file).map_err(|e| invalid(format!("not a readable GGUF file: {e}")))?;
    from_gguf_metadata(&content.metadata, path)
}

/// Build the tokenizer from GGUF metadata (`path` is only named in errors).
pub fn from_gguf_metadata(
    metadata: &HashMap<String, Value>,
    path: &Path,
) -> Result<Tokenizer, TokenizerError> {
    let meta = Meta {
        map: metadata,
        path,
    };
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let types = meta
        .opt_i32s("tokenizer.ggml.token_type")?
        .unwrap_or_default();
    let kind = meta.string("tokenizer.ggml.model")?;
    let (inner, default_add_bos) = match kind.as_str() {
        "gpt2" => (byte_level_bpe(&meta, &tokens)?, false),
        "llama" => (spm::sentencepiece_bpe(&meta, &tokens, &types)?, true),
        other => {
            return Err(TokenizerError::Unsupported {
                path: path.to_owned(),
                what: "tokenizer.ggml.model",
                found: other.to_owned(),
                supported: "gpt2 (byte-level BPE), llama (SentencePiece)",
            });
        }
    };
    let mut inner = inner;
    add_special_tokens(&mut inner, &tokens, &types)
        .map_err(|e| TokenizerError::Codec(e.to_string()))?;
    let token_at = |key: &str| -> Result<Option<(u32, String)>, TokenizerError> {
        Ok(meta
            .opt_u32(key)?
            .and_then(|id| tokens.get(id as usize).map(|t| (id, t.clone()))))
    };
    let bos = token_at("tokenizer.ggml.bos_token_id")?;
    let eos = token_at("tokenizer.ggml.eos_token_id")?;
    let eot = token_at("tokenizer.ggml.eot_token_id")?;
    let add_bos = meta
        .opt_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(default_add_bos);
    if let (true, Some((id, text))) = (add_bos, &bos) {
        let post = TemplateProcessing::builder()
            .try_single(format!("{text} $A"))
            .and_then(|b| b.try_pair(format!("{text} $A {text} $B")))
            .map_err(|e| TokenizerError::Codec(e.to_string()))?
            .special_tokens(vec![(text.clone(), *id)])
            .build()
            .map_err(|e| TokenizerError::Codec(e.to_string()))?;
        inner.with_post_processor(Some(post));
    }
    let eos_ids: Vec<u32> = [&eos, &eot]
        .iter()
        .filter_map(|t| t.as_ref().map(|(id, _)| *id))
        .collect();
    let chat_template = meta.opt_string("tokenizer.chat_template")?;
    Ok(Tokenizer::from_parts(
        inner,
        bos.map(|t| t.1),
        eos.map(|t| t.1),
        &eos_ids,
        chat_template,
    ))
}

/// Byte-level BPE from `tokenizer.ggml.tokens` + `tokenizer.ggml.merges`.
fn byte_level_bpe(meta: &Meta, tokens: &[String]) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let merges = meta.strings("tokenizer.ggml.merges")?;
    let merges = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| TokenizerError::GgufKey {
                    path: meta.path.to_owned(),
                    key: format!("tokenizer.ggml.merges[{i}]"),
                    expected: format!("two tokens separated by a space, found {m:?}"),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let pre = meta
        .opt_string("tokenizer.ggml.pre")?
        .unwrap_or_else(|| "default".into());
    let pre_tokenizer = pretok::for_pre_type(&pre, meta.path)?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(pretok::ignores_merges(&pre))
        .build()
        .map_err(|e| TokenizerError::Invalid {
            path: meta.path.to_owned(),
            reason: format!("BPE: {e}"),
        })?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre_tokenizer));
    tok.with_decoder(Some(ByteLevel::default()));
    Ok(tok)
}

/// Control tokens become special (never split, skipped when decoding with `skip_special`); user-defined
/// tokens are matched whole but kept in decoded text.
fn add_special_tokens(
    tok: &mut tokenizers::Tokenizer,
    tokens: &[String],
    types: &[i32],
) -> tokenizers::Result<()> {
    let of_type = |ty: i32, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(types)
            .filter(|(_, t)| **t == ty)
            .map(|(text, _)| AddedToken::from(text.clone(), special).normalized(false))
            .collect()
    };
    tok.add_special_tokens(of_type(TOKEN_CONTROL, true))?;
    tok.add_tokens(of_type(TOKEN_USER_DEFINED, false))?;
    Ok(())
}
