//! Reading an answers file back, and repairing the one thing a crash can leave: a last line cut short.

use std::fs::OpenOptions;
use std::path::Path;

use super::{AnswerRecord, AnswersError};
use crate::store::StoreError;

/// The records of `path` (empty when it does not exist). A last line without its newline was cut by a
/// crash mid-write: it is dropped from the file (that answer is generated again); any other bad line is an
/// error naming the file and line.
pub fn read_answers(path: &Path) -> Result<Vec<AnswerRecord>, AnswersError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(path, e).into()),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        tracing::warn!(path = %path.display(), "dropping a torn last answer line");
        OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(complete as u64).and_then(|_| f.sync_all()))
            .map_err(|e| StoreError::io(path, e))?;
    }
    let text = String::from_utf8_lossy(&bytes[..complete]);
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| AnswersError::BadLine {
                path: path.to_owned(),
                line: i + 1,
                reason: e.to_string(),
            })
        })
        .collect()
}
