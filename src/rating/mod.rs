//! Ratings: rubric, blind pairing, the append-only journal, agreement, the results table and its automatic
//! check, exports, study import.

pub mod agreement;
pub mod answers;
pub mod auto;
pub mod blind;
pub mod context;
pub mod export;
pub mod figure;
pub mod journal;
pub mod math_check;
pub mod ratings;
pub mod results;
pub mod results_format;
pub mod rubric;
pub mod session;
pub mod stats;
pub mod study;

pub use blind::{StagePair, blind_layout};
pub use journal::{AnswerKey, BlindShown, Entry, JournalLine, QuestionRef};
pub use ratings::{Ratings, ScoreRecord};
pub use results::{Cell, TaskResults};
pub use rubric::Rubric;

use std::path::PathBuf;

/// Errors of the ratings module; each names the file, line or value it concerns.
#[derive(Debug, thiserror::Error)]
pub enum RatingError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{path}:{line}: {message}")]
    Journal {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}:{line}: not an answer line: {message}")]
    Answers {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: not written: {message}")]
    Refused { path: PathBuf, message: String },
    #[error("rubric: {0}")]
    Rubric(String),
    #[error(
        "stage pair {0:?}: expected two different stages joined by '-', like base-e1, base-e3 or e1-e3"
    )]
    Pair(String),
    #[error("{path}: could not write the export: {message}")]
    Export { path: PathBuf, message: String },
    #[error("could not encode: {0}")]
    Encode(String),
}
