//! The ratings journal: one JSON line per judgement, appended and fsynced; read back line by line.
//!
//! A line is `{"rater": .., "time": .., "kind": "score" | "note" | "reference_wrong" | "undo", ..}`.
//! Nothing is ever rewritten: a correction is a later line, an undo is a line that cancels the rater's
//! latest judgement still standing. [`super::Ratings::replay`] rebuilds the state.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::RatingError;
use crate::store::atomic::append_line_synced;

/// One question of one question set: what a note or a "reference is wrong" flag is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QuestionRef {
    pub task: String,
    pub questions: String,
    pub question: String,
}

/// One answer that can be rated: a model's answer to one question at one stage (base, e1, e3, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AnswerKey {
    #[serde(flatten)]
    pub item: QuestionRef,
    pub model: String,
    pub stage: String,
}

/// Which stage was shown as A and which as B when a judgement was made blind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlindShown {
    pub a: String,
    pub b: String,
}

/// What a journal line records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// The scores given so far to one answer (criterion name -> value); replaces earlier ones for that answer.
    Score {
        answer: AnswerKey,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<String>,
        scores: BTreeMap<String, f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        blind: Option<BlindShown>,
        /// Raw text of cells that were not valid scores (study import): kept, never counted.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        unparsed: BTreeMap<String, String>,
    },
    /// A free-text note about one model's answers to one question (empty text clears it).
    Note {
        item: QuestionRef,
        model: String,
        text: String,
    },
    /// The rater's view on whether the question's reference answer is wrong.
    ReferenceWrong { item: QuestionRef, wrong: bool },
    /// Cancels the rater's latest judgement that is still standing.
    Undo,
}

/// One line of the journal: who, when, what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalLine {
    pub rater: String,
    /// RFC 3339, UTC.
    pub time: String,
    #[serde(flatten)]
    pub entry: Entry,
}

impl JournalLine {
    pub fn new(rater: &str, time: String, entry: Entry) -> Self {
        JournalLine {
            rater: rater.to_owned(),
            time,
            entry,
        }
    }
}

/// The current UTC time as RFC 3339, for journal lines.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

/// Append one line to the journal and fsync it; when this returns Ok the judgement survives a crash.
pub fn append(path: &Path, line: &JournalLine) -> Result<(), RatingError> {
    let text = serde_json::to_string(line).map_err(|e| RatingError::Encode(e.to_string()))?;
    append_line_synced(path, &text)?;
    Ok(())
}

/// Append many lines in one write and one fsync.
pub fn append_all(path: &Path, lines: &[JournalLine]) -> Result<(), RatingError> {
    if lines.is_empty() {
        return Ok(());
    }
    let texts: Vec<String> = lines
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<_, _>>()
        .map_err(|e| RatingError::Encode(e.to_string()))?;
    append_line_synced(path, &texts.join("\n"))?;
    Ok(())
}

/// Read every line of the journal; a missing file is an empty journal.
///
/// A last line without its newline is what a crash during an append leaves: it is skipped with a
/// warning (it was never shown as saved). Any other line that does not parse is an error naming the line.
pub fn read(path: &Path) -> Result<Vec<JournalLine>, RatingError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(crate::store::StoreError::io(path, e).into()),
    };
    let complete = text.ends_with('\n');
    let raw: Vec<&str> = text.lines().collect();
    let mut lines = Vec::with_capacity(raw.len());
    for (i, l) in raw.iter().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<JournalLine>(l) {
            Ok(line) => lines.push(line),
            Err(_) if i + 1 == raw.len() && !complete => {
                tracing::warn!(path = %path.display(), line = i + 1, "skipping a torn last journal line");
            }
            Err(e) => {
                return Err(RatingError::Journal {
                    path: path.to_owned(),
                    line: i + 1,
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(lines)
}

/// Test fixture: a plain score line (no run, no blind mapping) of `question` in the question set named like
/// its task, one value per criterion of the study's default rubric.
#[cfg(test)]
pub(crate) fn test_score_line(
    rater: &str,
    task: &str,
    model: &str,
    stage: &str,
    question: &str,
    values: [f64; 3],
) -> JournalLine {
    let answer = AnswerKey {
        item: QuestionRef {
            task: task.into(),
            questions: task.into(),
            question: question.into(),
        },
        model: model.into(),
        stage: stage.into(),
    };
    let scores = super::rubric::Rubric::default()
        .criteria
        .into_iter()
        .zip(values)
        .collect();
    JournalLine::new(
        rater,
        "t".into(),
        Entry::Score {
            answer,
            run: None,
            scores,
            blind: None,
            unparsed: BTreeMap::new(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score_line() -> JournalLine {
        let answer = AnswerKey {
            item: QuestionRef {
                task: "math".into(),
                questions: "math".into(),
                question: "3".into(),
            },
            model: "llama-3.1-8b".into(),
            stage: "e1".into(),
        };
        let scores = BTreeMap::from([("Helpfulness".to_string(), 4.0)]);
        let blind = Some(BlindShown {
            a: "e1".into(),
            b: "base".into(),
        });
        JournalLine::new(
            "ann",
            "2026-01-01T00:00:00Z".into(),
            Entry::Score {
                answer,
                run: None,
                scores,
                blind,
                unparsed: BTreeMap::new(),
            },
        )
    }

    #[test]
    fn lines_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ratings.jsonl");
        let undo = JournalLine::new("ann", "2026-01-01T00:00:01Z".into(), Entry::Undo);
        append_all(&p, &[score_line(), undo.clone()]).unwrap();
        assert_eq!(read(&p).unwrap(), vec![score_line(), undo]);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with(r#"{"rater":"ann","time":"2026-01-01T00:00:00Z","kind":"score","answer":{"task":"math""#), "{text}");
    }

    #[test]
    fn a_torn_last_line_is_skipped_but_a_bad_middle_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ratings.jsonl");
        append(&p, &score_line()).unwrap();
        let mut text = std::fs::read_to_string(&p).unwrap();
        text.push_str(r#"{"rater":"ann","ti"#);
        std::fs::write(&p, &text).unwrap();
        assert_eq!(read(&p).unwrap().len(), 1);
        text.push('\n');
        std::fs::write(&p, &text).unwrap();
        let err = read(&p).unwrap_err().to_string();
        assert!(err.contains("ratings.jsonl:2"), "{err}");
        assert!(read(&dir.path().join("none.jsonl")).unwrap().is_empty());
    }
}
