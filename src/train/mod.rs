//! Training: dataset pipeline, optimizer with savable state, schedules, the training session, checkpoints
//! and resume. Knows nothing of threads or events: `sweep` drives it.

pub mod adamw;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod decoder_model;
pub mod keep_blocks;
pub mod model;
pub mod optim;
pub mod schedule;
pub mod session;
pub mod settings;
pub mod step;
pub mod toy;

use std::path::{Path, PathBuf};

/// Errors of training; each names the file, row or step it concerns.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{}{}: {message}", path.display(), row.map(|r| format!(", row {r}")).unwrap_or_default())]
    Data {
        path: PathBuf,
        row: Option<usize>,
        message: String,
    },
    #[error(
        "non-finite {what} at step {step} (epoch {epoch}, micro-batch {batch}, dataset rows {rows:?})"
    )]
    NonFinite {
        what: String,
        step: u64,
        epoch: u32,
        batch: usize,
        rows: Vec<usize>,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    State(String),
    #[error("model: {0}")]
    Model(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl TrainError {
    pub fn data(path: &Path, row: Option<usize>, message: String) -> Self {
        TrainError::Data {
            path: path.to_owned(),
            row,
            message,
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }
}
