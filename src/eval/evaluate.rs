//! Answers for planned runs, shared by `qlab eval` and the runner's evaluation after training: the model's
//! files and tokenizer, each run's answer sets, and one run evaluated stage by stage with progress reports.

use std::path::PathBuf;

use std::sync::atomic::AtomicBool;

use candle_core::Device;

use crate::config::{Config, ConfigErrors, PromptStyle};
use crate::eval::answers::{AnswerRecord, AnswersError, read_answers};
use crate::eval::prompts::{PromptError, QuestionPrompt};
use crate::eval::questions::QuestionSet;
use crate::eval::sources;
use crate::eval::stages::{
    AnswerSet, StageError, answer_sets, generation_options, run_answer_sets,
};
use crate::model::Quant;
use crate::model::generate::{OpenError, open_model};
use crate::model::text::tokenizer::{Tokenizer, TokenizerError};
use crate::plan::PlannedRun;
use crate::source::{ResolveOptions, SourceError};
use crate::store::SweepPaths;

/// Why answers could not be produced; each names the model, dataset or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    #[error("no [[model]] `{0}` in the config")]
    UnknownModel(String),
    #[error("model {model}: {source}")]
    Source {
        model: String,
        #[source]
        source: SourceError,
    },
    #[error("model {model}: {source}")]
    Tokenizer {
        model: String,
        #[source]
        source: TokenizerError,
    },
    #[error("model {model}: chat_template file: {source}")]
    ChatTemplateFile {
        model: String,
        #[source]
        source: std::io::Error,
    },
    #[error("model {0}: chat_template = \"none\" but [eval] prompt = \"chat\"")]
    ChatDisabled(String),
    #[error("dataset {0}: no `questions` file to benchmark it with")]
    NoQuestions(String),
    #[error("{0}")]
    Questions(ConfigErrors),
    #[error(transparent)]
    Prompt(#[from] PromptError),
    #[error("model {model}: {source}")]
    Open {
        model: String,
        #[source]
        source: Box<OpenError>,
    },
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(transparent)]
    Answers(#[from] AnswersError),
}

/// A model ready to be asked questions: its local files, tokenizer and chat-template choice.
pub struct EvalModel {
    pub id: String,
    pub path: PathBuf,
    pub quant: Quant,
    pub tokenizer: Tokenizer,
    /// `Some(None)`: chat templates disabled; `Some(Some(text))`: a template file's text.
    pub chat_override: Option<Option<String>>,
}

impl EvalModel {
    /// Resolve the model's files (fetching them when needed) and load its tokenizer.
    pub fn prepare(config: &Config, model_id: &str) -> Result<EvalModel, EvaluateError> {
        let model = config
            .model(model_id)
            .ok_or_else(|| EvaluateError::UnknownModel(model_id.to_owned()))?;
        let err = |source| EvaluateError::Source {
            model: model_id.to_owned(),
            source,
        };
        let path = sources::source_of(model, config)
            .resolve(&ResolveOptions::from_env().map_err(err)?)
            .map_err(err)?;
        let tokenizer = Tokenizer::load(&path).map_err(|source| EvaluateError::Tokenizer {
            model: model_id.to_owned(),
            source,
        })?;
        let chat_override = sources::chat_template_override(model, config).map_err(|source| {
            EvaluateError::ChatTemplateFile {
                model: model_id.to_owned(),
                source,
            }
        })?;
        Ok(EvalModel {
            id: model_id.to_owned(),
            path,
            quant: Quant::from(model.quant),
            tokenizer,
            chat_override,
        })
    }

    /// The run's answer sets that can be made now (base, and each stage whose checkpoint exists), and the
    /// stages not trained yet.
    pub fn answer_sets(
        &self,
        config: &Config,
        sweep: &SweepPaths,
        run: &PlannedRun,
    ) -> Result<(Vec<AnswerSet>, Vec<String>), EvaluateError> {
        let dataset = &run.spec.dataset;
        let questions_file = dataset
            .questions
            .as_deref()
            .ok_or_else(|| EvaluateError::NoQuestions(dataset.id.clone()))?;
        let set = QuestionSet::load(&config.resolve_path(questions_file))
            .map_err(EvaluateError::Questions)?;
        let style = run.spec.eval.prompt;
        let override_text = match (&self.chat_override, style) {
            (Some(None), PromptStyle::Chat) => {
                return Err(EvaluateError::ChatDisabled(run.model.clone()));
            }
            (Some(Some(text)), _) => Some(text.as_str()),
            _ => None,
        };
        let prompt = QuestionPrompt::new(dataset, style, &self.tokenizer, override_text)?;
        let questions = prompt.prompt_all(&set)?;
        let generation = generation_options(&run.spec.eval, &self.tokenizer);
        Ok(answer_sets(
            sweep,
            run,
            &set.id,
            &questions,
            &generation,
            prompt.add_special_tokens(),
        ))
    }
}

/// What happens while a run is evaluated, for progress displays and the runner's events.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalProgress<'a> {
    StageStarted { stage: &'a str, questions: usize },
    Answer(&'a AnswerRecord),
    StageDone { stage: &'a str },
}

/// Answer the run's question set at every stage trained so far: base first, then each stage with its
/// adapter. Complete answer files are skipped without loading the model; partial ones resume.
pub fn evaluate_run(
    config: &Config,
    sweep: &SweepPaths,
    run: &PlannedRun,
    device: &Device,
    stop: Option<&AtomicBool>,
    progress: &mut dyn FnMut(EvalProgress<'_>),
) -> Result<(), EvaluateError> {
    let model = EvalModel::prepare(config, &run.model)?;
    let (sets, _not_trained) = model.answer_sets(config, sweep, run)?;
    let mut pending = Vec::new();
    for set in sets {
        let done = read_answers(&set.out)?.len();
        if done < set.questions.len() {
            pending.push(set);
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    // Base first, so that no adapter of a stage is loaded while the base answers.
    pending.sort_by_key(|s| s.adapter.is_some());
    let mut lm = open_model(&model.path, model.quant, None, device).map_err(|source| {
        EvaluateError::Open {
            model: model.id.clone(),
            source: Box::new(source),
        }
    })?;
    for set in pending {
        let stage = set.stage.clone();
        progress(EvalProgress::StageStarted {
            stage: &stage,
            questions: set.questions.len(),
        });
        let mut on_answer = |a: &AnswerRecord| progress(EvalProgress::Answer(a));
        run_answer_sets(
            &mut lm,
            &model.tokenizer,
            &model.id,
            vec![set],
            stop,
            &mut on_answer,
        )?;
        progress(EvalProgress::StageDone { stage: &stage });
    }
    Ok(())
}
