//! SentencePiece vocabularies (Llama 2, Mistral, Gemma GGUFs) as a byte-fallback BPE. GGUF stores pieces and
//! scores but no merges; the merges are derived the way transformers' SentencePieceExtractor does: every pair
//! of pieces whose concatenation is a piece, ranked by that piece's score (ties by the pair's ids).

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};

use super::meta::Meta;
use crate::model::text::tokenizer::TokenizerError;

/// GGUF token type of ordinary pieces (1); 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
const TOKEN_NORMAL: i32 = 1;

pub(super) fn sentencepiece_bpe(
    meta: &Meta,
    tokens: &[String],
    types: &[i32],
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let scores = meta.opt_f32s("tokenizer.ggml.scores")?.unwrap_or_default();
    if scores.len() != tokens.len() {
        return Err(TokenizerError::GgufKey {
            path: meta.path.to_owned(),
            key: "tokenizer.ggml.scores".into(),
            expected: format!(
                "one score per token ({} tokens, {} scores)",
                tokens.len(),
                scores.len()
            ),
        });
    }
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let is_normal = |id: usize| types.get(id).is_none_or(|t| *t == TOKEN_NORMAL);
    let merges = derive_merges(tokens, &scores, &vocab, is_normal);
    let unk_id = meta
        .opt_u32("tokenizer.ggml.unknown_token_id")?
        .unwrap_or(0) as usize;
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = tokens.get(unk_id) {
        builder = builder.unk_token(unk.clone());
    }
    let bpe = builder.build().map_err(|e| TokenizerError::Invalid {
        path: meta.path.to_owned(),
        reason: format!("BPE: {e}"),
    })?;
    let add_space_prefix = meta
        .opt_bool("tokenizer.ggml.add_space_prefix")?
        .unwrap_or(true);
    let prepend = if add_space_prefix {
        PrependScheme::First
    } else {
        PrependScheme::Never
    };
    let codec = |e: tokenizers::Error| TokenizerError::Codec(e.to_string());
    let mut decoders = vec![
        Replace::new("\u{2581}", " ").map_err(codec)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(Metaspace::new('\u{2581}', prepend, false)));
    tok.with_decoder(Some(Sequence::new(decoders)));
    Ok(tok)
}

fn derive_merges(
    tokens: &[String],
    scores: &[f32],
    vocab: &Vocab,
    is_normal: impl Fn(usize) -> bool,
) -> Vec<(String, String)> {
    let normal_id = |piece: &str| {
        vocab
            .get(piece)
            .copied()
            .filter(|&id| is_normal(id as usize))
    };
    let mut ranked: Vec<(f32, String, String)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if !is_normal(id) {
            continue;
        }
        let mut local: Vec<(u32, u32, usize)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| Some((normal_id(&piece[..at])?, normal_id(&piece[at..])?, at)))
            .collect();
        local.sort_unstable();
        ranked.extend(
            local
                .into_iter()
                .map(|(_, _, at)| (scores[id], piece[..at].to_owned(), piece[at..].to_owned())),
        );
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    ranked.into_iter().map(|(_, l, r)| (l, r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_the_merged_piece_score() {
        let tokens: Vec<String> = ["<unk>", "a", "b", "c", "ab", "abc", "bc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, -1.0, -1.0, -1.0, -2.0, -5.0, -3.0];
        let types = [2, 1, 1, 1, 1, 1, 1];
        let vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let merges = derive_merges(&tokens, &scores, &vocab, |id| types[id] == 1);
        let pairs: Vec<(&str, &str)> = merges
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(
            pairs,
            vec![("a", "b"), ("b", "c"), ("a", "bc"), ("ab", "c")]
        );
    }
}
