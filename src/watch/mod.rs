//! Following runs from their files, with no UI: incremental tails of metrics logs, per-run histories with
//! bounded graph memory, and an honest ETA. Shared by the dashboard, `qlab status` and the CLI progress.

pub mod eta;
pub mod follow;
pub mod history;
pub mod series;
pub mod tail;

pub use eta::{Eta, format_duration, progress_fraction};
pub use follow::MetricsFollower;
pub use history::{CheckpointInfo, RunHistory};
pub use series::Series;
pub use tail::LineTail;

use std::path::PathBuf;

/// Errors while following run files; each names the file and, for bad content, the line.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}:{line}: not a metrics event (expected one JSON object with \"ts\", \"run\" and \"event\"): {source}"
    )]
    BadLine {
        path: PathBuf,
        line: u64,
        #[source]
        source: serde_json::Error,
    },
}
