//! A model's tokenizer with what generation needs around it: BOS/EOS, the end-of-turn tokens that stop a
//! chat answer, and the chat template; loaded from tokenizer.json (+ tokenizer_config.json) or from a GGUF.

mod hf_files;
mod stream;

use std::path::{Path, PathBuf};

pub use stream::TextStream;

/// Token texts that end an assistant turn in the families qlab knows, stopped on whenever present.
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "<|end|>",
    "<|endoftext|>",
];

/// Errors loading or using a tokenizer; each names the file and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(
        "{path}: no tokenizer found (expected tokenizer.json beside config.json, or a .gguf file)"
    )]
    Missing { path: PathBuf },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: GGUF metadata {key}: expected {expected}")]
    GgufKey {
        path: PathBuf,
        key: String,
        expected: String,
    },
    #[error("{path}: unsupported {what} {found:?} (supported: {supported})")]
    Unsupported {
        path: PathBuf,
        what: &'static str,
        found: String,
        supported: &'static str,
    },
    #[error("tokenizer: {0}")]
    Codec(String),
}

/// A tokenizer plus the special tokens and chat template of its model.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<String>,
    eos: Option<String>,
    stop_ids: Vec<u32>,
    pad_id: u32,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("stop_ids", &self.stop_ids)
            .finish()
    }
}

impl Tokenizer {
    /// From a model path: a `.gguf` file, a `tokenizer.json` file, or a directory holding tokenizer.json.
    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        if path
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
        {
            return super::gguf_tokenizer::from_gguf_file(path);
        }
        let dir = if path.is_dir() {
            path
        } else if !path.is_file() {
            return Err(TokenizerError::Invalid {
                path: path.to_owned(),
                reason: "neither a model file nor a model directory (a device file?)".into(),
            });
        } else {
            path.parent().unwrap_or(Path::new("."))
        };
        hf_files::from_dir(dir)
    }

    /// Assemble from parts; `bos`/`eos` are token texts, `eos_ids` the ids the model config names as EOS.
    pub fn from_parts(
        inner: tokenizers::Tokenizer,
        bos: Option<String>,
        eos: Option<String>,
        eos_ids: &[u32],
        chat_template: Option<String>,
    ) -> Self {
        let mut stop_ids: Vec<u32> = eos_ids.to_vec();
        stop_ids.extend(eos.as_deref().and_then(|t| inner.token_to_id(t)));
        stop_ids.extend(END_OF_TURN.iter().filter_map(|t| inner.token_to_id(t)));
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let pad_id = ["<pad>", "<|finetune_right_pad_id|>", "<|endoftext|>"]
            .iter()
            .find_map(|t| inner.token_to_id(t))
            .or_else(|| stop_ids.first().copied())
            .unwrap_or(0);
        Tokenizer {
            inner,
            bos,
            eos,
            stop_ids,
            pad_id,
            chat_template,
        }
    }

    /// Token ids of `text`; `add_special` lets the tokenizer add what it is configured to add (e.g. BOS).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| TokenizerError::Codec(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; `skip_special` drops control tokens such as `<|im_end|>`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Codec(e.to_string()))
    }

    /// The vocabulary strings of `ids` (as stored, e.g. `Ġis`), `<id>` for an id outside the vocabulary.
    pub fn tokens(&self, ids: &[u32]) -> Vec<String> {
        ids.iter()
            .map(|&id| {
                self.inner
                    .id_to_token(id)
                    .unwrap_or_else(|| format!("<{id}>"))
            })
            .collect()
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Ids at which a generation stops: EOS and the end-of-turn tokens of the model's family.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// An id safe to pad with (padding positions are masked out, so its value never matters to the model).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos.as_deref()
    }

    /// The Jinja chat template shipped with the model, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The underlying `tokenizers` tokenizer (for the training data pipeline).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
