//! The resolved settings one training run needs (a run's slice of experiments.toml), independent of how the
//! config file spells them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which tokens the loss is computed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TrainOn {
    /// Only the answer: tokens after the completion marker (or after the template's last placeholder).
    #[default]
    Completion,
    /// The whole rendered text (what the study did).
    All,
}

/// What to do with a row whose field is missing, not a string, or empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnBadRow {
    /// Report every bad row and stop before training.
    #[default]
    Error,
    /// Skip bad rows and count them.
    Skip,
}

/// File format of a dataset; `None` in [`DatasetSpec::format`] means "from the file extension".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    Jsonl,
    Json,
    Csv,
    Parquet,
}

/// One training dataset: where it is and how a row becomes training text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSpec {
    pub path: PathBuf,
    pub format: Option<DataFormat>,
    /// Use only the first `limit` rows of the file.
    pub limit: Option<usize>,
    /// Training text with `{placeholder}` fields, e.g. `"### Input:\n{question}\n\n### Response:\n{answer}"`.
    pub template: String,
    /// Text in the template where the completion starts (loss starts after it when `train_on = completion`).
    pub completion_marker: Option<String>,
    /// Placeholder name -> column name in the file (identity when absent).
    pub fields: BTreeMap<String, String>,
    pub train_on: TrainOn,
    pub on_bad_row: OnBadRow,
}

/// Learning-rate schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Linear,
    Cosine,
    Constant,
}

/// Warmup length, as a fraction of all steps or a step count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Warmup {
    Ratio(f64),
    Steps(u64),
}

/// Optimisation and loop settings of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    pub epochs: u32,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Clip gradients to this global L2 norm (None: no clipping).
    pub max_grad_norm: Option<f64>,
    pub schedule: ScheduleKind,
    pub warmup: Warmup,
    pub max_seq_len: usize,
    pub packing: bool,
    pub seed: u64,
    /// Write a checkpoint every this many optimizer steps (0: only at epoch stages and the end).
    pub checkpoint_every: u64,
    /// Step checkpoints kept (epoch stages are always kept).
    pub keep_checkpoints: usize,
    /// Epochs after which a stage checkpoint (`e1`, `e3`, ...) is written for evaluation.
    pub eval_at_epochs: Vec<u32>,
}

impl TrainSettings {
    /// The study's settings (see STUDY.md), with a checkpoint every 50 steps.
    pub fn study_defaults() -> Self {
        TrainSettings {
            epochs: 3,
            batch_size: 2,
            grad_accum: 6,
            lr: 2e-5,
            weight_decay: 0.01,
            max_grad_norm: Some(1.0),
            schedule: ScheduleKind::Linear,
            warmup: Warmup::Ratio(0.1),
            max_seq_len: 2048,
            packing: false,
            seed: 3407,
            checkpoint_every: 50,
            keep_checkpoints: 2,
            eval_at_epochs: vec![1, 3],
        }
    }
}
