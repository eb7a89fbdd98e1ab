//! Where the decoder's tensors come from: a uniform, HF-named view over safetensors, bnb-4bit and GGUF files.

use std::path::PathBuf;

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};

use super::frozen::FrozenWeight;
use crate::config::QuantSpec;
use crate::model::error::{ModelError, Result};

/// How frozen projections of an unquantized checkpoint are stored in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    /// Keep the weights as stored (f32 / bf16 / f16).
    None,
    /// NF4 with double quantization (QLoRA's default).
    Nf4,
    /// A GGUF block type (q4_0, q4_1, q8_0, q4k, q6k ...).
    Ggml(GgmlDType),
}

/// The quantisation experiments.toml names: the one conversion from the config's value.
impl From<QuantSpec> for Quant {
    fn from(q: QuantSpec) -> Self {
        match q {
            QuantSpec::None => Self::None,
            QuantSpec::Nf4 => Self::Nf4,
            QuantSpec::Q4_0 => Self::Ggml(GgmlDType::Q4_0),
            QuantSpec::Q4_1 => Self::Ggml(GgmlDType::Q4_1),
            QuantSpec::Q5_0 => Self::Ggml(GgmlDType::Q5_0),
            QuantSpec::Q5_1 => Self::Ggml(GgmlDType::Q5_1),
            QuantSpec::Q8_0 => Self::Ggml(GgmlDType::Q8_0),
            QuantSpec::Q4k => Self::Ggml(GgmlDType::Q4K),
            QuantSpec::Q5k => Self::Ggml(GgmlDType::Q5K),
            QuantSpec::Q6k => Self::Ggml(GgmlDType::Q6K),
        }
    }
}

impl Quant {
    /// Parses "none", "nf4", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2k".."q6k".
    pub fn parse(s: &str) -> Option<Self> {
        let g = |d| Some(Self::Ggml(d));
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "none" => Some(Self::None),
            "nf4" => Some(Self::Nf4),
            "q4_0" => g(GgmlDType::Q4_0),
            "q4_1" => g(GgmlDType::Q4_1),
            "q5_0" => g(GgmlDType::Q5_0),
            "q5_1" => g(GgmlDType::Q5_1),
            "q8_0" => g(GgmlDType::Q8_0),
            "q2k" | "q2_k" => g(GgmlDType::Q2K),
            "q3k" | "q3_k" => g(GgmlDType::Q3K),
            "q4k" | "q4_k" => g(GgmlDType::Q4K),
            "q5k" | "q5_k" => g(GgmlDType::Q5K),
            "q6k" | "q6_k" => g(GgmlDType::Q6K),
            _ => None,
        }
    }

    /// Applies this policy to a dense weight read from `path`.
    pub fn apply(self, w: Tensor, path: &std::path::Path, name: &str) -> Result<FrozenWeight> {
        match self {
            Self::None => Ok(FrozenWeight::Dense(w)),
            Self::Nf4 => Ok(FrozenWeight::quantize_nf4(&w)?),
            Self::Ggml(d) => {
                let cols = w.dims().last().copied().unwrap_or(0);
                if !cols.is_multiple_of(d.block_size()) {
                    return Err(ModelError::invalid(
                        path,
                        format!(
                            "`{name}` has rows of {cols} values, which {d:?} cannot hold (needs a multiple of {}); choose q4_0, q4_1, q8_0 or nf4",
                            d.block_size()
                        ),
                    ));
                }
                Ok(FrozenWeight::quantize_ggml(&w, d)?)
            }
        }
    }
}

/// Tensors by their Hugging Face names (`model.layers.3.self_attn.q_proj.weight`).
pub trait TensorSource {
    /// The file that holds (or would hold) `name`, for error messages.
    fn file_of(&self, name: &str) -> PathBuf;
    /// Logical shape, None if absent.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// A small tensor (norm weight, bias) as f32.
    fn dense(&self, name: &str, device: &Device) -> Result<Tensor>;
    /// A projection weight, quantized per `quant` unless the file already stores it quantized.
    fn frozen(&self, name: &str, quant: Quant, device: &Device) -> Result<FrozenWeight>;
    /// The embedding table, as stored (GGUF type or the checkpoint's float type).
    fn embedding(&self, name: &str, device: &Device) -> Result<FrozenWeight>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_config_quant_converts_to_the_quant_its_name_parses_to() {
        for spec in [
            QuantSpec::None,
            QuantSpec::Nf4,
            QuantSpec::Q4_0,
            QuantSpec::Q4_1,
            QuantSpec::Q5_0,
            QuantSpec::Q5_1,
            QuantSpec::Q8_0,
            QuantSpec::Q4k,
            QuantSpec::Q5k,
            QuantSpec::Q6k,
        ] {
            let name = serde_json::to_value(spec).unwrap();
            let parsed = Quant::parse(name.as_str().unwrap());
            assert_eq!(parsed, Some(Quant::from(spec)), "{spec:?}");
        }
    }
}
