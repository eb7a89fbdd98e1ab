//! Answer sets of one model: the base answers (shared by every run of the model on a question set) and one
//! set per trained stage (its checkpoint's adapter applied unmerged), all with the run's [eval] settings.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use crate::config::EvalSection;
use crate::eval::answers::{
    AnswerJob, AnswerRecord, AnswersError, AnswersSummary, PromptedQuestion, answer_questions,
};
use crate::model::generate::{DecoderLm, GenerateOptions, Sampling};
use crate::model::text::tokenizer::Tokenizer;
use crate::plan::PlannedRun;
use crate::store::SweepPaths;

/// The stage whose answers come from the frozen base, without an adapter.
pub const BASE: &str = "base";

/// One answers file to complete.
#[derive(Debug, Clone)]
pub struct AnswerSet {
    pub stage: String,
    /// The checkpoint adapter (PEFT layout) for a fine-tuned stage; `None` for the base.
    pub adapter: Option<PathBuf>,
    pub out: PathBuf,
    pub questions: Vec<PromptedQuestion>,
    pub generation: GenerateOptions,
    pub batch_size: usize,
    pub add_special_tokens: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("stage {stage}: adapter {dir}: {source}")]
    Adapter {
        stage: String,
        dir: PathBuf,
        #[source]
        source: Box<crate::model::ModelError>,
    },
    #[error("stage {stage}: {source}")]
    Answers {
        stage: String,
        #[source]
        source: Box<AnswersError>,
    },
}

/// Decoding settings from `[eval]`: greedy at temperature 0, else seeded sampling (top-p below 1).
pub fn generation_options(eval: &EvalSection, tokenizer: &Tokenizer) -> GenerateOptions {
    let sampling = if eval.temperature > 0.0 {
        let top_p = (eval.top_p < 1.0).then_some(eval.top_p);
        Sampling::Sample {
            temperature: eval.temperature,
            top_p,
            seed: eval.seed,
        }
    } else {
        Sampling::Greedy
    };
    GenerateOptions {
        max_new_tokens: eval.max_new_tokens,
        sampling,
        stop_ids: tokenizer.stop_ids().to_vec(),
        pad_id: tokenizer.pad_id(),
    }
}

/// The answer sets `run` needs now, and the stages skipped because their checkpoint does not exist yet.
pub fn answer_sets(
    sweep: &SweepPaths,
    run: &PlannedRun,
    questions_id: &str,
    questions: &[PromptedQuestion],
    generation: &GenerateOptions,
    add_special_tokens: bool,
) -> (Vec<AnswerSet>, Vec<String>) {
    let mut sets = Vec::new();
    let mut not_trained = Vec::new();
    let paths = sweep.run(&run.id);
    for stage in &run.stages {
        let (adapter, out) = if stage == BASE {
            (
                None,
                sweep.base_answers(&run.model, questions_id, &run.eval_hash),
            )
        } else {
            let dir = paths.stage_adapter(stage);
            if !dir.join("adapter_config.json").is_file() {
                not_trained.push(stage.clone());
                continue;
            }
            (
                Some(dir),
                paths.answers(stage, questions_id, &run.eval_hash),
            )
        };
        sets.push(AnswerSet {
            stage: stage.clone(),
            adapter,
            out,
            questions: questions.to_vec(),
            generation: generation.clone(),
            batch_size: run.spec.eval.batch_size.max(1),
            add_special_tokens,
        });
    }
    (sets, not_trained)
}

/// Complete every set on `lm` (the model's frozen base, no adapter loaded): base sets first (once per
/// answers file), then each stage with its adapter. Returns each set's stage, file and summary.
pub fn run_answer_sets(
    lm: &mut DecoderLm,
    tokenizer: &Tokenizer,
    model_id: &str,
    mut sets: Vec<AnswerSet>,
    stop: Option<&AtomicBool>,
    on_answer: &mut dyn FnMut(&AnswerRecord),
) -> Result<Vec<(String, PathBuf, AnswersSummary)>, StageError> {
    sets.sort_by(|a, b| (a.adapter.is_some(), &a.out).cmp(&(b.adapter.is_some(), &b.out)));
    sets.dedup_by(|a, b| a.out == b.out);
    let mut done = Vec::new();
    for set in sets {
        if let Some(dir) = &set.adapter {
            lm.decoder_mut()
                .load_peft(dir)
                .map_err(|source| StageError::Adapter {
                    stage: set.stage.clone(),
                    dir: dir.clone(),
                    source: Box::new(source),
                })?;
        }
        let job = AnswerJob {
            model_id,
            stage: &set.stage,
            out: &set.out,
            batch_size: set.batch_size,
            generation: &set.generation,
            add_special_tokens: set.add_special_tokens,
            stop,
        };
        let summary =
            answer_questions(lm, tokenizer, &set.questions, &job, on_answer).map_err(|source| {
                StageError::Answers {
                    stage: set.stage.clone(),
                    source: Box::new(source),
                }
            })?;
        done.push((set.stage, set.out, summary));
    }
    Ok(done)
}

#[cfg(test)]
mod tests;
