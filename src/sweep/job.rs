//! What the runner is asked to train: one job per run of the plan, and how it gets a model for a job.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use super::events::RunEvent;

use crate::config::DeviceSpec;
use crate::eval::evaluate::EvaluateError;
use crate::model::ModelError;
use crate::model::text::tokenizer::TokenizerError;
use crate::source::SourceError;
use crate::train::TrainError;
use crate::train::data::examples::TextEncoder;
use crate::train::model::TrainableModel;
use crate::train::settings::{DatasetSpec, TrainSettings};

/// One run of the sweep, fully resolved (saved as the run's spec.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunJob {
    /// Stable id (slug + settings hash): the run directory's name.
    pub run_id: String,
    /// The model's name in the config; the [`ModelLoader`] resolves it.
    pub model: String,
    /// `cpu` or `cuda:N` (`auto` is resolved when the job is made); a string in spec.json.
    pub device: DeviceSpec,
    pub data: DatasetSpec,
    pub train: TrainSettings,
}

/// A model ready to train, with the tokenizer that feeds it.
pub struct LoadedModel {
    pub model: Box<dyn TrainableModel>,
    pub encoder: Box<dyn TextEncoder>,
    /// Token used for padding (carries no loss).
    pub pad_id: u32,
}

/// Why a job's model could not be made ready; each names the model and the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("run `{0}` is not in the plan")]
    NotInPlan(String),
    #[error("model `{model}`: finding its files: {source}")]
    Source {
        model: String,
        #[source]
        source: Box<SourceError>,
    },
    #[error("model `{model}`: {source}")]
    Model {
        model: String,
        #[source]
        source: Box<ModelError>,
    },
    #[error("model `{model}`: {source}")]
    Tokenizer {
        model: String,
        #[source]
        source: Box<TokenizerError>,
    },
    #[error("{}: neither the model nor its tokenizer names an EOS token", path.display())]
    NoEos { path: PathBuf },
    #[error("[lora] targets: unknown LoRA target `{0}`")]
    UnknownTarget(String),
    #[error("[lora] r: LoRA rank {0} must be positive")]
    Rank(i64),
    #[error("model `{model}`: building the trainable model: {source}")]
    Build {
        model: String,
        #[source]
        source: Box<TrainError>,
    },
}

/// Builds the model of a job on the runner thread (which then owns it).
pub trait ModelLoader: Send + Sync {
    fn load(&self, job: &RunJob) -> Result<LoadedModel, LoadError>;
}

/// Why a run's question set could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum EvalJobError {
    #[error("run `{0}` is not in the plan")]
    NotInPlan(String),
    #[error("device: {0}")]
    Device(#[source] ModelError),
    #[error(transparent)]
    Evaluate(#[from] EvaluateError),
    /// Model code panicked while answering.
    #[error("{0}")]
    Panicked(String),
}

/// Answers a finished run's question set at each trained stage on `device` (the one the run trained on),
/// reporting `EvalStarted`, `AnswerReady` and `EvalDone` events through `emit` and ending early once `stop`
/// is set; the runner calls it after training unless the run opts out.
pub trait RunEvaluator: Send + Sync {
    fn evaluate(
        &self,
        run_id: &str,
        device: DeviceSpec,
        stop: &AtomicBool,
        emit: &mut dyn FnMut(RunEvent),
    ) -> Result<(), EvalJobError>;
}
