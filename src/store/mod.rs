//! The runs/ directory: run dirs, atomic status writes, journals (metrics logs, answers, ratings), locks,
//! and capped reads of the files a user names.

pub mod atomic;
pub mod bounded;
pub mod gguf_header;
pub mod jsonl;
pub mod layout;
pub mod lock;
pub mod status;

pub use layout::{RunPaths, SweepPaths};
pub use lock::RunLock;
pub use status::{RunState, RunStatus};

/// Seconds since the Unix epoch, as run files and events record times (0 on a clock before 1970).
pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Errors of the run store; each names the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON for {what}: {source}")]
    Json {
        path: std::path::PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}:{line}: {message}")]
    Line {
        path: std::path::PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: larger than {} MiB: not a {what} (a device file? a runaway write?)", limit >> 20)]
    TooLarge {
        path: std::path::PathBuf,
        limit: u64,
        what: String,
    },
    #[error("{path}: run is locked by another process (pid {pid})")]
    Locked {
        path: std::path::PathBuf,
        pid: String,
    },
}

impl StoreError {
    pub fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }
}
