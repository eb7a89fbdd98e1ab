//! The fallback when the in-process fetch fails: `python -m pip download --no-deps`, which brings pip's own
//! configuration (pip.conf, certificates, credentials) to bear.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::source::SourceError;

/// `pip download` the wheel of `requirement` into `dir`, from `index` when one is configured (else pip's own).
pub(super) fn download(
    python: &str,
    requirement: &str,
    index: Option<&str>,
    dir: &Path,
) -> Result<(), SourceError> {
    fs::create_dir_all(dir).map_err(|e| SourceError::io(dir, e))?;
    tracing::info!(requirement, dir = %dir.display(), "pip download");
    let mut command = Command::new(python);
    command.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
    ]);
    if let Some(index) = index {
        command.args(["--index-url", index]);
    }
    let output = command
        .arg("-d")
        .arg(dir)
        .arg(requirement)
        .output()
        .map_err(|e| SourceError::PipMissing {
            python: python.to_owned(),
            requirement: requirement.to_owned(),
            reason: e.to_string(),
        })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if stderr.contains("No module named pip") {
        return Err(SourceError::PipMissing {
            python: python.to_owned(),
            requirement: requirement.to_owned(),
            reason: "No module named pip".into(),
        });
    }
    let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(3)..].join(" | ");
    Err(SourceError::PackageNotFound {
        requirement: requirement.to_owned(),
        stderr: tail,
    })
}
