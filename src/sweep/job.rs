//! What the runner is asked to train: one job per run of the plan, and how it gets a model for a job.

use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use super::events::RunEvent;

use crate::config::DeviceSpec;

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

/// Builds the model of a job on the runner thread (which then owns it).
pub trait ModelLoader: Send + Sync {
    fn load(&self, job: &RunJob) -> Result<LoadedModel, String>;
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
    ) -> Result<(), String>;
}
