//! The model a benchmark measures (`qlab bench train`, `qlab bench generate`): a preset at its real
//! dimensions with random weights, or a checkpoint directory / GGUF file, built one way for both.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::Device;

use super::builder::build_decoder;
use super::load_model;
use super::presets::{PRESETS, RandomWeights, preset};
use crate::model::decoder::Decoder;
use crate::model::error::{ModelError, Result};
use crate::model::quant::weights::Quant;
use crate::model::target::Target;

/// Which model to benchmark.
#[derive(Debug, Clone)]
pub enum BenchModel {
    /// A preset's dimensions with random weights.
    Preset(String),
    /// A checkpoint directory or GGUF file.
    Path(PathBuf),
}

impl BenchModel {
    /// The name a report gives the model.
    pub fn name(&self) -> String {
        match self {
            BenchModel::Preset(p) => p.clone(),
            BenchModel::Path(path) => path.display().to_string(),
        }
    }

    /// Builds the model on `device`. `quant` overrides the frozen storage (presets: their own, Q4_1 for
    /// smollm2-135m and NF4 otherwise; paths: NF4, GGUF tensors kept as stored); `layers` keeps a preset's
    /// first N blocks (profiling at real widths in less time and memory).
    pub fn build(
        &self,
        quant: Option<Quant>,
        layers: Option<usize>,
        device: &Device,
    ) -> Result<Decoder> {
        match self {
            BenchModel::Preset(p) => {
                let (mut config, default_quant) = preset(p).ok_or_else(|| {
                    ModelError::Usage(format!(
                        "unknown preset `{p}`; expected one of {}",
                        PRESETS.join(", ")
                    ))
                })?;
                if let Some(n) = layers {
                    if n == 0 {
                        return Err(ModelError::Usage("--layers must be at least 1".into()));
                    }
                    config.num_layers = n.min(config.num_layers);
                    config.layer_windows.truncate(config.num_layers);
                }
                let quant = quant.unwrap_or(default_quant);
                let src = RandomWeights {
                    config: config.clone(),
                    seed: 0,
                    embed_q8_0: matches!(quant, Quant::Ggml(_)),
                };
                build_decoder(config, &src, quant, device)
            }
            BenchModel::Path(path) => load_model(path, quant.unwrap_or(Quant::Nf4), device),
        }
    }
}

/// The storage kinds of the frozen projections, the most common first, joined by `+` (`q4_1` for a preset;
/// `q5_0+q8_0+q6k+q4k` for a Q4_K_M GGUF of a narrow model).
pub fn projection_kinds(decoder: &Decoder) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for blk in &decoder.blocks {
        for t in Target::ALL {
            *counts.entry(blk.linear(t).base.weight.kind()).or_default() += 1;
        }
    }
    let mut kinds: Vec<(String, usize)> = counts.into_iter().collect();
    kinds.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let names: Vec<String> = kinds.into_iter().map(|(k, _)| k).collect();
    names.join("+")
}
