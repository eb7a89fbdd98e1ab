//! HTTP for the package index: a ureq agent per request, through the proxy the environment names for its
//! URL; pages are read whole (bounded), wheels streamed to disk with their sha256 checked on the way.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use url::Url;

use super::FetchError;
use super::proxy::ProxySettings;
use super::tls;

/// An index page larger than this is refused rather than held in memory.
const PAGE_LIMIT: u64 = 64 << 20;

/// A page as the server answered it.
pub(super) struct Page {
    pub body: String,
    /// The MIME type without parameters (ureq's `text/plain` when none was sent).
    pub content_type: String,
    /// Where it came from after redirects: the base for relative links.
    pub url: Url,
}

/// `url` with any password replaced, for messages and logs.
pub(super) fn shown(url: &Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}

/// A proxy setting (`scheme://user:pass@host:port`, or without the scheme) with any password masked.
fn shown_proxy(proxy: &str) -> String {
    match Url::parse(proxy) {
        Ok(url) if proxy.contains("://") => shown(&url).trim_end_matches('/').to_owned(),
        _ => proxy.rsplit('@').next().unwrap_or(proxy).to_owned(),
    }
}

fn agent(url: &Url, proxy: &ProxySettings) -> Result<ureq::Agent, FetchError> {
    let tls = tls::client_config().map_err(|reason| FetchError::Transport {
        url: shown(url),
        reason,
    })?;
    let builder = ureq::AgentBuilder::new()
        .tls_config(tls)
        .try_proxy_from_env(false)
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(60))
        .user_agent(concat!("qlab/", env!("CARGO_PKG_VERSION")));
    let Some(proxy) = proxy.for_url(url) else {
        return Ok(builder.build());
    };
    let parsed = ureq::Proxy::new(proxy).map_err(|e| FetchError::BadProxy {
        proxy: shown_proxy(proxy),
        url: shown(url),
        reason: e.to_string(),
    })?;
    tracing::debug!(url = %shown(url), proxy = %shown_proxy(proxy), "through proxy");
    Ok(builder.proxy(parsed).build())
}

fn get(url: &Url, accept: &str, proxy: &ProxySettings) -> Result<ureq::Response, FetchError> {
    let agent = agent(url, proxy)?;
    match agent.request_url("GET", url).set("Accept", accept).call() {
        Ok(response) => Ok(response),
        Err(ureq::Error::Status(status, _)) => Err(FetchError::Status {
            url: shown(url),
            status,
        }),
        Err(ureq::Error::Transport(t)) => {
            let mut reason = t.kind().to_string();
            if let Some(message) = t.message() {
                reason = format!("{reason}: {message}");
            }
            if let Some(source) = std::error::Error::source(&t) {
                reason = format!("{reason}: {source}");
            }
            if let Some(p) = proxy.for_url(url) {
                reason = format!("{reason} (through proxy {})", shown_proxy(p));
            }
            if reason.contains("certificate") {
                reason.push_str(
                    "; the system's certificates are trusted, and SSL_CERT_FILE names a CA bundle",
                );
            }
            Err(FetchError::Transport {
                url: shown(url),
                reason,
            })
        }
    }
}

/// GET a simple-index page, asking for `accept`.
pub(super) fn get_page(url: &Url, accept: &str, proxy: &ProxySettings) -> Result<Page, FetchError> {
    let response = get(url, accept, proxy)?;
    let final_url = Url::parse(response.get_url()).unwrap_or_else(|_| url.clone());
    let content_type = response.content_type().to_owned();
    let mut body = String::new();
    let read = response
        .into_reader()
        .take(PAGE_LIMIT + 1)
        .read_to_string(&mut body);
    let transport = |reason: String| FetchError::Transport {
        url: shown(url),
        reason,
    };
    let n = read.map_err(|e| transport(format!("reading the page: {e}")))?;
    if n as u64 > PAGE_LIMIT {
        return Err(transport(format!("page larger than {PAGE_LIMIT} bytes")));
    }
    Ok(Page {
        body,
        content_type,
        url: final_url,
    })
}

/// Stream `url` into `dest` through a temp file beside it, renamed into place only when its sha256 is the
/// index's `expected` (when the index gives one).
pub(super) fn download(
    url: &Url,
    expected: Option<&str>,
    dest: &Path,
    proxy: &ProxySettings,
) -> Result<(), FetchError> {
    let response = get(url, "*/*", proxy)?;
    let total = response
        .header("Content-Length")
        .and_then(|v| v.parse::<u64>().ok());
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source: std::io::Error| FetchError::Io { path, source }
    };
    let dir = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = super::temp_beside(dest);
    let result = (|| {
        let mut out = fs::File::create(&tmp).map_err(io(&tmp))?;
        let actual = copy_hashing(response.into_reader(), &mut out, &tmp, url, total)?;
        out.sync_all().map_err(io(&tmp))?;
        match expected {
            Some(exp) if !exp.eq_ignore_ascii_case(&actual) => {
                return Err(FetchError::Checksum {
                    url: shown(url),
                    expected: exp.to_owned(),
                    actual,
                });
            }
            Some(_) => {}
            None => tracing::warn!(url = %shown(url), "the index gives no sha256 for this wheel"),
        }
        fs::rename(&tmp, dest).map_err(io(dest))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Copy with a 1 MiB buffer, hashing as it goes and logging every tenth of `total`; returns the sha256.
fn copy_hashing(
    mut from: impl Read,
    to: &mut fs::File,
    to_path: &Path,
    url: &Url,
    total: Option<u64>,
) -> Result<String, FetchError> {
    let start = Instant::now();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let (mut done, mut logged) = (0u64, 0u64);
    let step = total.map_or(16 << 20, |t| (t / 10).max(1));
    let mb = |b: u64| b as f64 / 1e6;
    tracing::info!(
        url = %shown(url),
        size_mb = total.map(|t| format!("{:.1}", mb(t))),
        "downloading"
    );
    loop {
        let n = from.read(&mut buf).map_err(|e| FetchError::Transport {
            url: shown(url),
            reason: format!("after {:.1} MB: {e}", mb(done)),
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n]).map_err(|source| FetchError::Io {
            path: to_path.to_owned(),
            source,
        })?;
        done += n as u64;
        if done - logged >= step {
            logged = done;
            tracing::info!(
                done_mb = format!("{:.1}", mb(done)),
                of_mb = total.map(|t| format!("{:.1}", mb(t))),
                "downloading"
            );
        }
    }
    tracing::info!(
        url = %shown(url),
        size_mb = format!("{:.1}", mb(done)),
        seconds = format!("{:.1}", start.elapsed().as_secs_f64()),
        "downloaded"
    );
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        let url = Url::parse("https://user:s3cret@mirror.example/simple/x/").unwrap();
        assert_eq!(shown(&url), "https://user:***@mirror.example/simple/x/");
        assert_eq!(
            shown_proxy("http://me:s3cret@proxy.local:3128"),
            "http://me:***@proxy.local:3128"
        );
        assert_eq!(
            shown_proxy("me:s3cret@proxy.local:3128"),
            "proxy.local:3128"
        );
    }
}
