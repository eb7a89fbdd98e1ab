//! Fetching a pinned wheel from a package index in-process (no Python needed): read the project page, pick
//! the wheel, stream it into the cache with the index's sha256 checked.

use std::path::{Path, PathBuf};

use super::http::{self, shown};
use super::proxy::ProxySettings;
use super::simple_api::{self, NoFit};

/// The index used when none is configured.
pub const DEFAULT_INDEX: &str = "https://pypi.org/simple";

/// Why the in-process fetch failed; each names the URL it was about.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("index URL {index:?} is not a URL: {reason}")]
    BadIndexUrl { index: String, reason: String },
    #[error(
        "{url}: no such project on this index (HTTP 404; set PIP_INDEX_URL to use another index)"
    )]
    NoProject { url: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("proxy {proxy} (for {url}) is not usable: {reason}")]
    BadProxy {
        proxy: String,
        url: String,
        reason: String,
    },
    #[error("{url}: not a simple-index page ({content_type}): {reason}")]
    BadPage {
        url: String,
        content_type: String,
        reason: String,
    },
    #[error("{url} lists no file of version {version} (versions listed: {listed:?})")]
    NoVersion {
        url: String,
        version: String,
        listed: Vec<String>,
    },
    #[error(
        "{url}: version {version} has no pure-Python (py3-none-any) wheel; its files: {files:?}"
    )]
    NoPureWheel {
        url: String,
        version: String,
        files: Vec<String>,
    },
    #[error("{url}: the download's sha256 is {actual}, the index says {expected}; it was not kept")]
    Checksum {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    /// Whether `pip download` might succeed where this failed: pip has its own configuration (pip.conf's
    /// index, the system's certificates, stored credentials, more proxy kinds), retries, and takes platform
    /// wheels. A project or version the index lacks, a bad checksum or a local disk error it would meet too.
    pub fn pip_might_help(&self) -> bool {
        match self {
            FetchError::Transport { .. }
            | FetchError::BadProxy { .. }
            | FetchError::BadPage { .. }
            | FetchError::NoPureWheel { .. } => true,
            FetchError::Status { status, .. } => {
                matches!(status, 401 | 403 | 407 | 408 | 429) || *status >= 500
            }
            FetchError::BadIndexUrl { .. }
            | FetchError::NoProject { .. }
            | FetchError::NoVersion { .. }
            | FetchError::Checksum { .. }
            | FetchError::Io { .. } => false,
        }
    }
}

/// Download the pure-Python wheel of `name==version` from the simple index at `index` into `dir`; returns
/// its path there.
pub(super) fn fetch_wheel(
    name: &str,
    version: &str,
    index: &str,
    dir: &Path,
    proxy: &ProxySettings,
) -> Result<PathBuf, FetchError> {
    let page_url = simple_api::project_url(index, name).map_err(|e| FetchError::BadIndexUrl {
        index: index.to_owned(),
        reason: e.to_string(),
    })?;
    let page = match http::get_page(&page_url, simple_api::ACCEPT, proxy) {
        Err(FetchError::Status { url, status: 404 }) => return Err(FetchError::NoProject { url }),
        other => other?,
    };
    let shown_page = shown(&page.url);
    let files =
        simple_api::parse_page(&page.body, &page.content_type, &page.url).map_err(|reason| {
            FetchError::BadPage {
                url: shown_page.clone(),
                content_type: page.content_type.clone(),
                reason,
            }
        })?;
    let wheel = simple_api::choose_wheel(&files, name, version).map_err(|no_fit| match no_fit {
        NoFit::Version(listed) => FetchError::NoVersion {
            url: shown_page.clone(),
            version: version.to_owned(),
            listed,
        },
        NoFit::Wheel(files) => FetchError::NoPureWheel {
            url: shown_page.clone(),
            version: version.to_owned(),
            files,
        },
    })?;
    tracing::info!(page = %shown_page, wheel = %wheel.filename, "found on the index");
    let dest = dir.join(&wheel.filename);
    http::download(&wheel.url, wheel.sha256.as_deref(), &dest, proxy)?;
    Ok(dest)
}
