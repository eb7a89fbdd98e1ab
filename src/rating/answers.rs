//! Answer files (JSONL, one generated answer per line) as the rating screen and the study import use them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RatingError;
use crate::store::atomic::write_atomic;
use crate::store::jsonl;

/// One generated answer: `{"question_id", "stage", "model", "prompt", "answer", "new_tokens", "secs"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerRecord {
    pub question_id: String,
    pub stage: String,
    pub model: String,
    #[serde(default)]
    pub prompt: String,
    pub answer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secs: Option<f64>,
}

/// Read an answers file; a missing file has no answers. A bad line is an error naming file and line;
/// a torn last line (no newline: a crash while appending) is skipped and reported once.
pub fn read_answers(path: &Path) -> Result<Vec<AnswerRecord>, RatingError> {
    jsonl::read(path)?
        .lines
        .into_iter()
        .map(|l| {
            serde_json::from_str(&l.text).map_err(|e| RatingError::Answers {
                path: path.to_owned(),
                line: l.number,
                message: e.to_string(),
            })
        })
        .collect()
}

/// Write a whole answers file atomically (used by the study import).
pub fn write_answers(path: &Path, records: &[AnswerRecord]) -> Result<(), RatingError> {
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).map_err(|e| RatingError::Encode(e.to_string()))?);
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Find the answers file of a question set in `dir` (files are named `<questions>-<eval-hash>.jsonl`).
/// `eval_hash` picks one exactly; without it the most recently written one is taken.
pub fn find_answers_file(
    dir: &Path,
    questions_id: &str,
    eval_hash: Option<&str>,
) -> Option<PathBuf> {
    if let Some(h) = eval_hash {
        let p = dir.join(format!("{questions_id}-{h}.jsonl"));
        return p.is_file().then_some(p);
    }
    let prefix = format!("{questions_id}-");
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let hash = name.strip_prefix(&prefix)?.strip_suffix(".jsonl")?;
            let plain = !hash.is_empty() && hash.chars().all(|c| c.is_ascii_alphanumeric());
            let modified = e.metadata().ok()?.modified().ok()?;
            plain.then(|| (modified, e.path()))
        })
        .max()
        .map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(q: &str) -> AnswerRecord {
        AnswerRecord {
            question_id: q.into(),
            stage: "e1".into(),
            model: "smollm2".into(),
            prompt: "p".into(),
            answer: "a".into(),
            new_tokens: Some(57),
            secs: Some(1.9),
        }
    }

    #[test]
    fn answers_round_trip_and_bad_lines_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("math-ff00.jsonl");
        write_answers(&p, &[rec("1"), rec("2")]).unwrap();
        assert_eq!(read_answers(&p).unwrap(), vec![rec("1"), rec("2")]);
        let line = r#"{"question_id": "3", "stage": "e1", "model": "smollm2", "prompt": "...", "answer": "...", "new_tokens": 57, "secs": 1.9}"#;
        std::fs::write(&p, format!("{line}\n{{\"question_id\": 4}}\n")).unwrap();
        let err = read_answers(&p).unwrap_err().to_string();
        assert!(
            err.contains("math-ff00.jsonl:2") && err.contains("answer"),
            "{err}"
        );
    }

    #[test]
    fn finds_the_file_of_a_question_set_but_not_of_a_longer_named_one() {
        let dir = tempfile::tempdir().unwrap();
        write_answers(&dir.path().join("math-hard-ab12.jsonl"), &[rec("1")]).unwrap();
        assert_eq!(find_answers_file(dir.path(), "math", None), None);
        write_answers(&dir.path().join("math-study.jsonl"), &[rec("1")]).unwrap();
        assert_eq!(
            find_answers_file(dir.path(), "math", None),
            Some(dir.path().join("math-study.jsonl"))
        );
        assert_eq!(find_answers_file(dir.path(), "math", Some("ab12")), None);
        assert!(find_answers_file(&dir.path().join("absent"), "math", None).is_none());
    }
}
