//! Storing an imported study in a sweep: answer files (eval hash `study`) and ratings by rater `study`.

use std::path::PathBuf;

use super::{STUDY_EVAL_HASH, STUDY_RATER, StudyError, StudyImport};
use crate::rating::answers::{AnswerRecord, write_answers};
use crate::rating::journal::{self, AnswerKey, Entry, JournalLine, QuestionRef};
use crate::rating::ratings::Ratings;
use crate::rating::rubric::Rubric;
use crate::store::SweepPaths;

/// Where the study's data goes in a sweep: its paths, the run that holds each model's adapter for a
/// task, and the question set of each task.
pub struct StudyTarget<'a> {
    pub sweep: &'a SweepPaths,
    /// The sweep's rubric: the journal is read and written against it.
    pub rubric: &'a Rubric,
    pub run_for: &'a dyn Fn(&str, &str) -> Option<String>,
    pub questions_for: &'a dyn Fn(&str) -> String,
}

/// What the import wrote.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StoreReport {
    pub answer_files: Vec<PathBuf>,
    /// Journal lines appended (answers whose stored study scores differed or were absent).
    pub ratings_written: usize,
    /// Answers whose study scores were already in the journal as they are.
    pub ratings_unchanged: usize,
}

/// Write answers and ratings. Importing the same files twice appends nothing the second time.
pub fn store(
    import: &StudyImport,
    target: &StudyTarget<'_>,
    time: &str,
) -> Result<StoreReport, StudyError> {
    let journal_path = target.sweep.ratings_journal();
    let standing = Ratings::replay(&journal::read(&journal_path, target.rubric)?);
    let mut report = StoreReport::default();
    let mut lines = Vec::new();
    for f in &import.files {
        let n = &f.name;
        let questions = (target.questions_for)(&n.task);
        let run = if n.stage == "base" {
            None
        } else {
            Some(
                (target.run_for)(&n.model, &n.task).ok_or_else(|| StudyError::NoRun {
                    model: n.model.clone(),
                    task: n.task.clone(),
                    file: f.path.clone(),
                })?,
            )
        };
        let path = match &run {
            None => target
                .sweep
                .base_answers(&n.model, &questions, STUDY_EVAL_HASH),
            Some(run) => target
                .sweep
                .run(run)
                .answers(&n.stage, &questions, STUDY_EVAL_HASH),
        };
        let records: Vec<AnswerRecord> = f
            .answers
            .iter()
            .map(|a| AnswerRecord {
                question_id: a.question.clone(),
                stage: n.stage.clone(),
                model: n.model.clone(),
                prompt: a.prompt.clone(),
                answer: a.answer.clone(),
                new_tokens: None,
                secs: None,
            })
            .collect();
        write_answers(&path, &records)?;
        report.answer_files.push(path);
        for a in &f.answers {
            let key = AnswerKey {
                item: QuestionRef {
                    task: n.task.clone(),
                    questions: questions.clone(),
                    question: a.question.clone(),
                },
                model: n.model.clone(),
                stage: n.stage.clone(),
            };
            if standing
                .score(STUDY_RATER, &key)
                .is_some_and(|r| r.scores == a.scores)
            {
                report.ratings_unchanged += 1;
                continue;
            }
            let entry = Entry::Score {
                answer: key,
                run: run.clone(),
                scores: a.scores.clone(),
                blind: None,
                unparsed: a.unparsed.clone(),
            };
            lines.push(JournalLine::new(STUDY_RATER, time.to_owned(), entry));
        }
    }
    journal::append_all(&journal_path, target.rubric, &lines)?;
    report.ratings_written = lines.len();
    Ok(report)
}
