//! The ratings journal: one JSON line per judgement, appended and fsynced; read back line by line.
//!
//! A line is `{"rater": .., "time": .., "kind": "score" | "note" | "reference_wrong" | "undo", ..}`.
//! Nothing is ever rewritten: a correction is a later line, an undo is a line that cancels the rater's
//! latest judgement still standing. [`super::Ratings::replay`] rebuilds the state.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::RatingError;
use super::rubric::Rubric;
use super::study::STUDY_RATER;
use crate::store::jsonl;

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

impl JournalLine {
    /// Why this line may not stand in a journal kept with `rubric`: a score that is not a finite number on
    /// the rubric's scale (the study's import keeps its in-range cells, half points included).
    pub fn off_rubric(&self, rubric: &Rubric) -> Option<String> {
        let Entry::Score { scores, .. } = &self.entry else {
            return None;
        };
        let imported = self.rater == STUDY_RATER;
        scores.iter().find_map(|(criterion, &v)| {
            let ok = if imported {
                rubric.in_range(v)
            } else {
                rubric.accepts(v)
            };
            (!ok).then(|| {
                format!(
                    "score {v} for {criterion:?} is off the rubric ({} to {} in steps of {})",
                    rubric.min, rubric.max, rubric.step
                )
            })
        })
    }
}

/// Append one line to the journal and fsync it; when this returns Ok the judgement survives a crash. A line
/// off the rubric is refused, never written.
pub fn append(path: &Path, rubric: &Rubric, line: &JournalLine) -> Result<(), RatingError> {
    append_all(path, rubric, std::slice::from_ref(line))
}

/// Append many lines in one write and one fsync (none when one of them is off the rubric).
pub fn append_all(path: &Path, rubric: &Rubric, lines: &[JournalLine]) -> Result<(), RatingError> {
    if lines.is_empty() {
        return Ok(());
    }
    if let Some(why) = lines.iter().find_map(|l| l.off_rubric(rubric)) {
        return Err(RatingError::Refused {
            path: path.to_owned(),
            message: why,
        });
    }
    let texts: Vec<String> = lines
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<_, _>>()
        .map_err(|e| RatingError::Encode(e.to_string()))?;
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    jsonl::append_synced(path, &texts)?;
    Ok(())
}

/// Read every line of the journal; a missing file is an empty journal.
///
/// A last line without its newline is what a crash during an append leaves: it is skipped and reported
/// once (it was never shown as saved; the next append moves it aside). Any other line that does not parse,
/// or holds a score off `rubric`, is an error naming the file and line.
pub fn read(path: &Path, rubric: &Rubric) -> Result<Vec<JournalLine>, RatingError> {
    let journal = jsonl::read(path)?;
    let mut lines = Vec::with_capacity(journal.lines.len());
    for l in journal.lines {
        let bad = |message: String| RatingError::Journal {
            path: path.to_owned(),
            line: l.number,
            message,
        };
        let line: JournalLine = serde_json::from_str(&l.text)
            .map_err(|e| bad(format!("not a ratings journal line: {e}")))?;
        if let Some(why) = line.off_rubric(rubric) {
            return Err(bad(why));
        }
        lines.push(line);
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
        let rubric = Rubric::default();
        append_all(&p, &rubric, &[score_line(), undo.clone()]).unwrap();
        assert_eq!(read(&p, &rubric).unwrap(), vec![score_line(), undo]);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with(r#"{"rater":"ann","time":"2026-01-01T00:00:00Z","kind":"score","answer":{"task":"math""#), "{text}");
    }

    #[test]
    fn a_torn_last_line_is_skipped_but_a_bad_middle_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ratings.jsonl");
        let rubric = Rubric::default();
        append(&p, &rubric, &score_line()).unwrap();
        let mut text = std::fs::read_to_string(&p).unwrap();
        text.push_str(r#"{"rater":"ann","ti"#);
        std::fs::write(&p, &text).unwrap();
        assert_eq!(read(&p, &rubric).unwrap().len(), 1);
        append(&p, &rubric, &score_line()).unwrap();
        assert_eq!(
            read(&p, &rubric).unwrap().len(),
            2,
            "written on a fresh line"
        );
        text.push('\n');
        std::fs::write(&p, &text).unwrap();
        let err = read(&p, &rubric).unwrap_err().to_string();
        assert!(err.contains("ratings.jsonl:2"), "{err}");
        assert!(
            read(&dir.path().join("none.jsonl"), &rubric)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn scores_off_the_rubric_are_refused_on_read_and_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ratings.jsonl");
        let rubric = Rubric::default();
        for bad in [99.0, -5.0, 4.5, f64::NAN] {
            let mut line = score_line();
            if let Entry::Score { scores, .. } = &mut line.entry {
                scores.insert("Helpfulness".into(), bad);
            }
            let err = append(&p, &rubric, &line).unwrap_err().to_string();
            assert!(err.contains("off the rubric"), "{bad}: {err}");
            assert!(!p.exists());
        }
        let good = serde_json::to_string(&score_line()).unwrap();
        let bad = good.replace("4.0", "99.0");
        std::fs::write(&p, format!("{good}\n{bad}\n")).unwrap();
        let err = read(&p, &rubric).unwrap_err().to_string();
        assert!(err.contains("ratings.jsonl:2: score 99"), "{err}");
        let half = Rubric {
            step: 0.5,
            ..Rubric::default()
        };
        std::fs::write(&p, format!("{good}\n{}\n", good.replace("4.0", "4.5"))).unwrap();
        assert!(read(&p, &rubric).is_err());
        assert_eq!(read(&p, &half).unwrap().len(), 2);
        let study = good.replace("\"ann\"", "\"study\"").replace("4.0", "4.5");
        std::fs::write(&p, format!("{study}\n")).unwrap();
        assert_eq!(
            read(&p, &rubric).unwrap().len(),
            1,
            "the study's own 4.5 stays"
        );
    }
}
