//! Architectures of the study's seven models and of the demo model, at their real dimensions, and a source
//! of random weights for them: benchmarks run at real sizes without downloading checkpoints.

use std::path::PathBuf;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::config::{Activation, Family, Llama3RopeScaling, ModelConfig};
use crate::model::error::{ModelError, Result};
use crate::model::quant::frozen::FrozenWeight;
use crate::model::quant::weights::{Quant, TensorSource};

/// Preset names accepted by `preset`.
pub const PRESETS: [&str; 8] = [
    "smollm2-135m",
    "llama-2-7b",
    "llama-3-8b",
    "llama-3.1-8b",
    "gemma-7b",
    "gemma-2-9b",
    "mistral-7b-v0.3",
    "qwen2-7b",
];

#[allow(clippy::too_many_arguments)]
fn base(
    family: Family,
    d: usize,
    ff: usize,
    layers: usize,
    heads: usize,
    kv: usize,
    head_dim: usize,
    vocab: usize,
    theta: f64,
) -> ModelConfig {
    let gemma = matches!(family, Family::Gemma | Family::Gemma2);
    ModelConfig {
        family,
        vocab_size: vocab,
        hidden_size: d,
        intermediate_size: ff,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim,
        rms_norm_eps: 1e-5,
        rope_theta: theta,
        rope_scaling: None,
        rope_freq_factors: None,
        rope_interleaved: false,
        max_position_embeddings: 8192,
        tie_word_embeddings: gemma,
        qkv_bias: family == Family::Qwen2,
        o_bias: false,
        activation: if gemma {
            Activation::GeluTanh
        } else {
            Activation::Silu
        },
        norm_plus_one: gemma,
        scale_embeddings: gemma,
        sandwich_norms: family == Family::Gemma2,
        attn_logit_softcap: None,
        final_logit_softcap: None,
        query_pre_attn_scalar: head_dim as f64,
        layer_windows: vec![None; layers],
        bos_token_id: None,
        eos_token_ids: Vec::new(),
    }
}

/// The architecture of a named model, and the quantization its frozen base uses in the study
/// (Q4_1 for the SmolLM2 demo GGUF, NF4 for the bnb-4bit checkpoints).
pub fn preset(name: &str) -> Option<(ModelConfig, Quant)> {
    use Family::*;
    let nf4 = Quant::Nf4;
    let cfg = match name {
        "smollm2-135m" => {
            let mut c = base(Llama, 576, 1536, 30, 9, 3, 64, 49152, 100_000.0);
            c.tie_word_embeddings = true;
            return Some((c, Quant::Ggml(GgmlDType::Q4_1)));
        }
        "llama-2-7b" => base(Llama, 4096, 11008, 32, 32, 32, 128, 32000, 10_000.0),
        "llama-3-8b" => base(Llama, 4096, 14336, 32, 32, 8, 128, 128_256, 500_000.0),
        "llama-3.1-8b" => {
            let mut c = base(Llama, 4096, 14336, 32, 32, 8, 128, 128_256, 500_000.0);
            c.rope_scaling = Some(Llama3RopeScaling {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            });
            c
        }
        "gemma-7b" => base(Gemma, 3072, 24576, 28, 16, 16, 256, 256_000, 10_000.0),
        "gemma-2-9b" => {
            let mut c = base(Gemma2, 3584, 14336, 42, 16, 8, 256, 256_000, 10_000.0);
            c.attn_logit_softcap = Some(50.0);
            c.final_logit_softcap = Some(30.0);
            c.layer_windows = (0..42).map(|i| (i % 2 == 0).then_some(4096)).collect();
            c
        }
        "mistral-7b-v0.3" => base(Mistral, 4096, 14336, 32, 32, 8, 128, 32768, 1_000_000.0),
        "qwen2-7b" => base(Qwen2, 3584, 18944, 28, 28, 4, 128, 152_064, 1_000_000.0),
        _ => return None,
    };
    Some((cfg, nf4))
}

/// Random weights with the shapes a config expects (uniform, small), quantized per `Quant` at load.
pub struct RandomWeights {
    pub config: ModelConfig,
    pub seed: u64,
    /// Store the embedding table as Q8_0 (as llama.cpp does next to Q4 projections) instead of bf16.
    pub embed_q8_0: bool,
}

impl RandomWeights {
    fn expected_shape(&self, name: &str) -> Option<Vec<usize>> {
        let c = &self.config;
        let (d, q, kv, ff) = (
            c.hidden_size,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
            c.intermediate_size,
        );
        if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
            return Some(vec![c.vocab_size, d]);
        }
        if name == "model.norm.weight" || name.ends_with("layernorm.weight") {
            return Some(vec![d]);
        }
        let shape = match name.rsplit('.').nth(1)? {
            "q_proj" => [q, d],
            "k_proj" | "v_proj" => [kv, d],
            "o_proj" => [d, q],
            "gate_proj" | "up_proj" => [ff, d],
            "down_proj" => [d, ff],
            _ => return None,
        };
        Some(if name.ends_with(".bias") {
            vec![shape[0]]
        } else {
            shape.to_vec()
        })
    }

    fn random(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let shape = self.shape(name).ok_or_else(|| ModelError::MissingTensor {
            path: self.file_of(name),
            name: name.to_string(),
        })?;
        let n: usize = shape.iter().product();
        let seed = name
            .bytes()
            .fold(self.seed, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let is_norm = shape.len() == 1 && !name.ends_with(".bias");
        let values: Vec<f32> = (0..n)
            .map(|_| {
                let u = rng.random_range(-0.05f32..0.05);
                if is_norm { 1.0 + u } else { u }
            })
            .collect();
        Ok(Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?)
    }
}

impl TensorSource for RandomWeights {
    fn file_of(&self, _name: &str) -> PathBuf {
        PathBuf::from("<random weights>")
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        if name == "lm_head.weight" && self.config.tie_word_embeddings {
            return None;
        }
        self.expected_shape(name)
    }

    fn dense(&self, name: &str, device: &Device) -> Result<Tensor> {
        self.random(name, DType::F32, device)
    }

    fn frozen(&self, name: &str, quant: Quant, device: &Device) -> Result<FrozenWeight> {
        let w = self.random(name, DType::F32, device)?;
        quant.apply(w, &self.file_of(name), name)
    }

    /// Q8_0 or bf16 (as bnb checkpoints keep it), see `embed_q8_0`.
    fn embedding(&self, name: &str, device: &Device) -> Result<FrozenWeight> {
        let w = self.random(name, DType::F32, device)?;
        Ok(if self.embed_q8_0 {
            FrozenWeight::quantize_ggml(&w, GgmlDType::Q8_0)?
        } else {
            FrozenWeight::Dense(w.to_dtype(DType::BF16)?)
        })
    }
}
