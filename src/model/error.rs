//! Errors of the model engine: every one names the file and what was expected, so bad input never panics.

use std::path::PathBuf;

/// What can go wrong while loading, running or saving a model or an adapter.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: pickle checkpoints (.bin/.pt/.pth) are refused because loading them can run code; convert it to safetensors first, e.g. `python -c \"from transformers import AutoModelForCausalLM as M; M.from_pretrained('DIR').save_pretrained('OUT', safe_serialization=True)\"`"
    )]
    PickleRefused { path: PathBuf },
    #[error(
        "{path}: unknown architecture `{found}`; expected one of llama, mistral, qwen2, gemma, gemma2"
    )]
    UnknownArchitecture { path: PathBuf, found: String },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },
    #[error(
        "{path}: tensor `{name}` has shape {found:?}, expected {expected:?} from the model config"
    )]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: cannot parse: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub(crate) fn invalid(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.into(),
            what: what.into(),
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, what: impl std::fmt::Display) -> Self {
        Self::Corrupt {
            path: path.into(),
            what: what.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;

/// The text of a small file the model's directory holds (a `config.json`, an index), read with a cap: a
/// device file or a runaway file is an error naming it, not an allocation abort.
pub(crate) fn read_capped(path: &std::path::Path, what: &str) -> Result<String> {
    use crate::store::StoreError;
    crate::store::bounded::read_to_string(path, 64 << 20, what).map_err(|e| match e {
        StoreError::Io { source, .. } => ModelError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => ModelError::Usage(other.to_string()),
    })
}
