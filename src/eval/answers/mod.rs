//! A model's answers to a question set at one stage (base or a checkpoint): prompts generated in batches
//! with identical settings, each answer appended and fsynced to a JSONL file the moment it is complete, so
//! an interrupted eval resumes by skipping the questions already answered.

mod journal;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::model::generate::{CausalLm, GenEvent, GenerateError, GenerateOptions, generate};
use crate::model::text::tokenizer::{Tokenizer, TokenizerError};
use crate::store::StoreError;
use crate::store::atomic::append_line_synced;

pub use journal::read_answers;

/// One line of an answers file (read by rating and results).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerRecord {
    pub question_id: String,
    /// `base`, or the stage of the checkpoint (`e1`, `e3`, ...).
    pub stage: String,
    pub model: String,
    pub prompt: String,
    pub answer: String,
    pub new_tokens: usize,
    /// Seconds from the start of its batch until this answer was complete.
    pub secs: f64,
}

/// A question ready to be asked: its id and the full prompt text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptedQuestion {
    pub question_id: String,
    pub prompt: String,
}

/// Everything that identifies one answers file and how it is produced.
#[derive(Debug, Clone)]
pub struct AnswerJob<'a> {
    pub model_id: &'a str,
    pub stage: &'a str,
    /// The JSONL file (`SweepPaths::base_answers` or `RunPaths::answers`).
    pub out: &'a Path,
    pub batch_size: usize,
    pub generation: &'a GenerateOptions,
    /// Let the tokenizer add its special tokens (BOS) to the prompt: true for a raw template prompt, false
    /// for a rendered chat template (which already holds them).
    pub add_special_tokens: bool,
    /// Checked before each batch: once set, the call ends with [`AnswersError::Stopped`] (answers written
    /// so far stay; the next call resumes after them).
    pub stop: Option<&'a AtomicBool>,
}

/// What one call did: answers written now and answers found from an earlier (interrupted) call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AnswersSummary {
    pub written: usize,
    pub already_done: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum AnswersError {
    #[error("{path}:{line}: not an answer record: {reason}")]
    BadLine {
        path: std::path::PathBuf,
        line: usize,
        reason: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("question {question_id}: {source}")]
    Tokenize {
        question_id: String,
        #[source]
        source: TokenizerError,
    },
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error("batch size must be at least 1")]
    ZeroBatch,
    #[error("stopped before all questions were answered")]
    Stopped,
    #[error("cannot encode an answer record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Answer every question not yet in `job.out`, `job.batch_size` at a time; `on_answer` sees each record
/// right after it is durably written.
pub fn answer_questions(
    model: &mut dyn CausalLm,
    tokenizer: &Tokenizer,
    questions: &[PromptedQuestion],
    job: &AnswerJob,
    on_answer: &mut dyn FnMut(&AnswerRecord),
) -> Result<AnswersSummary, AnswersError> {
    if job.batch_size == 0 {
        return Err(AnswersError::ZeroBatch);
    }
    let done: std::collections::HashSet<String> = read_answers(job.out)?
        .into_iter()
        .map(|a| a.question_id)
        .collect();
    let pending: Vec<&PromptedQuestion> = questions
        .iter()
        .filter(|q| !done.contains(&q.question_id))
        .collect();
    let mut summary = AnswersSummary {
        written: 0,
        already_done: questions.len() - pending.len(),
    };
    for batch in pending.chunks(job.batch_size) {
        if job.stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
            return Err(AnswersError::Stopped);
        }
        let ids = batch
            .iter()
            .map(|q| {
                tokenizer
                    .encode(&q.prompt, job.add_special_tokens)
                    .map_err(|source| AnswersError::Tokenize {
                        question_id: q.question_id.clone(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let start = Instant::now();
        let mut failure: Option<AnswersError> = None;
        let mut on_event = |event: GenEvent| {
            let GenEvent::Done { row, ids, .. } = event else {
                return;
            };
            if failure.is_some() {
                return;
            }
            let written = record(
                tokenizer,
                job,
                batch[row],
                ids,
                start.elapsed().as_secs_f64(),
            )
            .and_then(|rec| {
                append_line_synced(job.out, &serde_json::to_string(&rec)?)?;
                Ok(rec)
            });
            match written {
                Ok(rec) => {
                    summary.written += 1;
                    on_answer(&rec);
                }
                Err(e) => failure = Some(e),
            }
        };
        generate(model, &ids, job.generation, &mut on_event)?;
        if let Some(e) = failure {
            return Err(e);
        }
    }
    Ok(summary)
}

fn record(
    tokenizer: &Tokenizer,
    job: &AnswerJob,
    question: &PromptedQuestion,
    ids: &[u32],
    secs: f64,
) -> Result<AnswerRecord, AnswersError> {
    let answer = tokenizer
        .decode(ids, true)
        .map_err(|source| AnswersError::Tokenize {
            question_id: question.question_id.clone(),
            source,
        })?;
    Ok(AnswerRecord {
        question_id: question.question_id.clone(),
        stage: job.stage.to_owned(),
        model: job.model_id.to_owned(),
        prompt: question.prompt.clone(),
        answer,
        new_tokens: ids.len(),
        secs: (secs * 1000.0).round() / 1000.0,
    })
}
