//! Logs go to a file (never the terminal, which the dashboard owns): `$QLAB_LOG_DIR` or the user cache dir.

use std::path::PathBuf;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Where qlab's own log is written.
pub fn log_dir() -> PathBuf {
    std::env::var_os("QLAB_LOG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            directories::ProjectDirs::from("", "", "qlab")
                .map(|d| d.cache_dir().to_owned())
                .unwrap_or_else(|| std::env::temp_dir().join("qlab"))
        })
}

/// Start logging to `qlab.log`; keep the guard alive for the life of the process. Logging is best effort:
/// a directory that cannot be created leaves qlab running without a log.
pub fn init() -> Option<WorkerGuard> {
    let dir = log_dir();
    std::fs::create_dir_all(&dir).ok()?;
    let (writer, guard) =
        tracing_appender::non_blocking(tracing_appender::rolling::never(dir, "qlab.log"));
    let filter = EnvFilter::try_from_env("QLAB_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .with_env_filter(filter)
        .try_init()
        .ok()?;
    Some(guard)
}
