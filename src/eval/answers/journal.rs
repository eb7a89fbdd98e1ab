//! Reading an answers file back. A last line cut short by a crash is skipped (that answer is generated
//! again) and reported; the next append moves it aside (`store::jsonl`).

use std::path::Path;

use super::{AnswerRecord, AnswersError};
use crate::store::jsonl;

/// The records of `path` (empty when it does not exist); a bad line other than a torn last one is an error
/// naming the file and line.
pub fn read_answers(path: &Path) -> Result<Vec<AnswerRecord>, AnswersError> {
    jsonl::read(path)?
        .lines
        .into_iter()
        .map(|l| {
            serde_json::from_str(&l.text).map_err(|e| AnswersError::BadLine {
                path: path.to_owned(),
                line: l.number,
                reason: e.to_string(),
            })
        })
        .collect()
}
