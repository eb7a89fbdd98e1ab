//! Hugging Face models: found in the local hub cache (HF_HUB_CACHE, HF_HOME/hub or ~/.cache/huggingface/hub),
//! downloaded with hf-hub into that same cache when not there and the network is allowed.

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};

use super::{ResolveOptions, SourceError};

/// Files a safetensors model directory needs (besides its weights); the optional ones may be absent.
const REQUIRED: &[&str] = &["config.json", "tokenizer.json"];
const OPTIONAL: &[&str] = &[
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
];

/// The hub cache directory as the Python libraries find it.
pub fn hf_cache_dir() -> PathBuf {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => Cache::from_env().path().clone(),
    }
}

fn repo_of(repo: &str, revision: Option<&str>) -> Repo {
    match revision {
        Some(rev) => Repo::with_revision(repo.to_owned(), RepoType::Model, rev.to_owned()),
        None => Repo::model(repo.to_owned()),
    }
}

/// The snapshot directory of `repo` at `revision` in the local cache, if it is there.
fn local_snapshot(cache: &Path, repo: &str, revision: Option<&str>) -> Option<PathBuf> {
    let r = repo_of(repo, revision);
    let repo_dir = cache.join(r.folder_name());
    let rev = r.revision();
    let commit = match std::fs::read_to_string(repo_dir.join("refs").join(rev)) {
        Ok(hash) => hash.trim().to_owned(),
        Err(_) if rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit()) => rev.to_owned(),
        Err(_) => return None,
    };
    let snapshot = repo_dir.join("snapshots").join(commit);
    snapshot.is_dir().then_some(snapshot)
}

pub(super) fn resolve(
    repo: &str,
    revision: Option<&str>,
    file: Option<&str>,
    opts: &ResolveOptions,
) -> Result<PathBuf, SourceError> {
    let cache = hf_cache_dir();
    let snapshot = local_snapshot(&cache, repo, revision);
    let have = |name: &str| {
        snapshot
            .as_ref()
            .map(|s| s.join(name))
            .filter(|p| p.exists())
    };
    match file {
        Some(name) => {
            if let Some(path) = have(name) {
                return Ok(path);
            }
            download(&cache, repo, revision, &[name], opts)?;
            local_snapshot(&cache, repo, revision)
                .map(|s| s.join(name))
                .filter(|p| p.exists())
                .ok_or_else(|| hub_error(repo, format!("{name} not in the cache after download")))
        }
        None => {
            if let Some(dir) = snapshot.as_ref().filter(|s| is_complete(s)) {
                return Ok(dir.clone());
            }
            download_model_dir(&cache, repo, revision, opts)
        }
    }
}

/// A model directory is usable when its required files and all its weight files are present.
fn is_complete(dir: &Path) -> bool {
    if !REQUIRED.iter().all(|f| dir.join(f).exists()) {
        return false;
    }
    match std::fs::read_to_string(dir.join("model.safetensors.index.json")) {
        Ok(index) => shard_names(&index).iter().all(|s| dir.join(s).exists()),
        Err(_) => dir.join("model.safetensors").exists(),
    }
}

fn shard_names(index_json: &str) -> Vec<String> {
    let value: serde_json::Value = serde_json::from_str(index_json).unwrap_or_default();
    let mut names: Vec<String> = value["weight_map"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.dedup();
    names
}

fn hub_error(repo: &str, reason: impl Into<String>) -> SourceError {
    SourceError::Hub {
        repo: repo.to_owned(),
        reason: reason.into(),
    }
}

fn api_repo(
    cache: &Path,
    repo: &str,
    revision: Option<&str>,
) -> Result<hf_hub::api::sync::ApiRepo, SourceError> {
    let api = hf_hub::api::sync::ApiBuilder::from_cache(Cache::new(cache.to_owned()))
        .with_progress(false)
        .build()
        .map_err(|e| hub_error(repo, e.to_string()))?;
    Ok(api.repo(repo_of(repo, revision)))
}

fn download(
    cache: &Path,
    repo: &str,
    revision: Option<&str>,
    names: &[&str],
    opts: &ResolveOptions,
) -> Result<Vec<PathBuf>, SourceError> {
    if opts.offline {
        return Err(SourceError::Offline(format!(
            "hf {repo} ({})",
            names.join(", ")
        )));
    }
    let api = api_repo(cache, repo, revision)?;
    names
        .iter()
        .map(|name| {
            api.get(name)
                .map_err(|e| hub_error(repo, format!("cannot fetch {name}: {e}")))
        })
        .collect()
}

fn download_model_dir(
    cache: &Path,
    repo: &str,
    revision: Option<&str>,
    opts: &ResolveOptions,
) -> Result<PathBuf, SourceError> {
    let got = download(cache, repo, revision, REQUIRED, opts)?;
    let api = api_repo(cache, repo, revision)?;
    for name in OPTIONAL {
        if let Err(e) = api.get(name) {
            tracing::debug!(repo, name, error = %e, "optional file not fetched");
        }
    }
    match api.get("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index).map_err(|e| SourceError::io(&index, e))?;
            let shards = shard_names(&text);
            let shards: Vec<&str> = shards.iter().map(String::as_str).collect();
            download(cache, repo, revision, &shards, opts)?;
        }
        Err(_) => {
            download(cache, repo, revision, &["model.safetensors"], opts)?;
        }
    }
    got[0]
        .parent()
        .map(Path::to_owned)
        .ok_or_else(|| hub_error(repo, "downloaded config.json has no parent directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_snapshot_by_ref_and_by_commit_hash() {
        let cache = tempfile::tempdir().unwrap();
        let hash = "0123456789abcdef0123456789abcdef01234567";
        let repo_dir = cache.path().join("models--org--tiny");
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::write(repo_dir.join("refs").join("main"), hash).unwrap();
        let snap = repo_dir.join("snapshots").join(hash);
        std::fs::create_dir_all(&snap).unwrap();
        assert_eq!(
            local_snapshot(cache.path(), "org/tiny", None),
            Some(snap.clone())
        );
        assert_eq!(
            local_snapshot(cache.path(), "org/tiny", Some(hash)),
            Some(snap.clone())
        );
        assert_eq!(local_snapshot(cache.path(), "org/tiny", Some("v2")), None);
        assert!(!is_complete(&snap));
        for f in ["config.json", "tokenizer.json", "model.safetensors"] {
            std::fs::write(snap.join(f), "{}").unwrap();
        }
        assert!(is_complete(&snap));
        std::fs::write(
            snap.join("model.safetensors.index.json"),
            r#"{"weight_map":{"a":"m-1.safetensors"}}"#,
        )
        .unwrap();
        assert!(
            !is_complete(&snap),
            "a missing shard makes the snapshot incomplete"
        );
    }
}
