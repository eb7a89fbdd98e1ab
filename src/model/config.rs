//! Architecture description shared by every loader: one decoder, per-family switches, read from HF config.json.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::model::error::{ModelError, Result};

/// The model families the study uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Gemma,
    Gemma2,
}

impl Family {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Self::Llama),
            "mistral" => Some(Self::Mistral),
            "qwen2" => Some(Self::Qwen2),
            "gemma" => Some(Self::Gemma),
            "gemma2" => Some(Self::Gemma2),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Gemma => "gemma",
            Self::Gemma2 => "gemma2",
        }
    }

    fn is_gemma(self) -> bool {
        matches!(self, Self::Gemma | Self::Gemma2)
    }
}

/// Feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// gelu with the tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
}

/// Llama 3.1 "llama3" rope scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// Everything the decoder needs to know about an architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Per-frequency divisors read from a GGUF `rope_freqs.weight` (llama 3.1 GGUF files).
    pub rope_freq_factors: Option<Vec<f32>>,
    /// GGUF llama q/k rows are permuted for interleaved rope; HF checkpoints use the half split.
    pub rope_interleaved: bool,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub activation: Activation,
    /// Gemma's RMSNorm multiplies by (1 + w) (HF checkpoints; GGUF files store 1 + w already).
    pub norm_plus_one: bool,
    /// Gemma multiplies the embeddings by sqrt(hidden_size).
    pub scale_embeddings: bool,
    /// Gemma 2: norms after attention and after the feed-forward as well as before.
    pub sandwich_norms: bool,
    pub attn_logit_softcap: Option<f64>,
    pub final_logit_softcap: Option<f64>,
    /// Attention scores are multiplied by query_pre_attn_scalar^-0.5 (head_dim^-0.5 unless Gemma 2 says otherwise).
    pub query_pre_attn_scalar: f64,
    /// Sliding-window size per layer (None: full causal attention).
    pub layer_windows: Vec<Option<usize>>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    hidden_activation: Option<String>,
    attn_logit_softcapping: Option<f64>,
    final_logit_softcapping: Option<f64>,
    query_pre_attn_scalar: Option<f64>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
}

fn token_ids(v: &Option<Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

fn parse_rope_scaling(path: &Path, v: &Value) -> Result<Option<Llama3RopeScaling>> {
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "llama3" => {
            let num = |key: &str| {
                v.get(key).and_then(Value::as_f64).ok_or_else(|| {
                    ModelError::invalid(
                        path,
                        format!("rope_scaling \"llama3\" needs a number `{key}`"),
                    )
                })
            };
            Ok(Some(Llama3RopeScaling {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            }))
        }
        other => Err(ModelError::invalid(
            path,
            format!(
                "rope scaling type `{other}` is not supported (expected \"default\" or \"llama3\")"
            ),
        )),
    }
}

impl ModelConfig {
    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = crate::model::error::read_capped(path, "model config.json")?;
        Self::from_hf_json(path, &text)
    }

    /// Parses the text of a Hugging Face `config.json`; `path` is only used in error messages.
    pub fn from_hf_json(path: &Path, text: &str) -> Result<Self> {
        let raw: HfConfig = serde_json::from_str(text).map_err(|e| ModelError::corrupt(path, e))?;
        let model_type = raw.model_type.clone().ok_or_else(|| {
            ModelError::invalid(path, "no `model_type` (expected e.g. \"llama\")")
        })?;
        let family = Family::parse(&model_type).ok_or_else(|| ModelError::UnknownArchitecture {
            path: path.to_path_buf(),
            found: model_type.clone(),
        })?;
        if raw.mlp_bias == Some(true) {
            return Err(ModelError::invalid(
                path,
                "mlp_bias = true is not supported",
            ));
        }
        let rope_params = raw.rope_parameters.as_ref();
        let rope_theta = raw
            .rope_theta
            .or_else(|| {
                rope_params
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(10_000.0);
        let rope_scaling = match raw.rope_scaling.as_ref().or(rope_params) {
            Some(v) if !v.is_null() => parse_rope_scaling(path, v)?,
            _ => None,
        };
        let heads = raw.num_attention_heads;
        if heads == 0 || raw.hidden_size == 0 || raw.num_hidden_layers == 0 || raw.vocab_size == 0 {
            return Err(ModelError::invalid(path, "sizes must be positive"));
        }
        let head_dim = raw.head_dim.unwrap_or(raw.hidden_size / heads);
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        if num_kv_heads == 0 || !heads.is_multiple_of(num_kv_heads) {
            return Err(ModelError::invalid(
                path,
                format!(
                    "num_attention_heads {heads} is not a multiple of num_key_value_heads {num_kv_heads}"
                ),
            ));
        }
        let act_name = raw
            .hidden_activation
            .clone()
            .or(raw.hidden_act.clone())
            .unwrap_or_else(|| "silu".into());
        let activation = match (family.is_gemma(), act_name.as_str()) {
            // HF Gemma always runs the tanh approximation, whatever older configs say.
            (true, _) => Activation::GeluTanh,
            (false, "silu" | "swish") => Activation::Silu,
            (false, "gelu_pytorch_tanh") => Activation::GeluTanh,
            (false, other) => {
                return Err(ModelError::invalid(
                    path,
                    format!("activation `{other}` is not supported"),
                ));
            }
        };
        let n = raw.num_hidden_layers;
        let layer_windows = layer_windows(family, &raw, n, path)?;
        let attention_bias = raw.attention_bias.unwrap_or(false);
        Ok(Self {
            family,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: n,
            num_heads: heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            rope_freq_factors: None,
            rope_interleaved: false,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(family.is_gemma()),
            qkv_bias: family == Family::Qwen2 || attention_bias,
            o_bias: family != Family::Qwen2 && attention_bias,
            activation,
            norm_plus_one: family.is_gemma(),
            scale_embeddings: family.is_gemma(),
            sandwich_norms: family == Family::Gemma2,
            attn_logit_softcap: raw
                .attn_logit_softcapping
                .filter(|_| family == Family::Gemma2),
            final_logit_softcap: raw
                .final_logit_softcapping
                .filter(|_| family == Family::Gemma2),
            query_pre_attn_scalar: match family {
                Family::Gemma2 => raw.query_pre_attn_scalar.unwrap_or(head_dim as f64),
                _ => head_dim as f64,
            },
            layer_windows,
            bos_token_id: token_ids(&raw.bos_token_id).first().copied(),
            eos_token_ids: token_ids(&raw.eos_token_id),
        })
    }

    /// Why these dimensions belong to no model (a damaged header or config.json): a zero size, one beyond
    /// any model's, or heads that do not group into the key/value heads.
    pub fn absurd(&self) -> Option<String> {
        let dims = [
            ("vocabulary", self.vocab_size, 1 << 24),
            ("hidden size", self.hidden_size, 1 << 17),
            ("intermediate size", self.intermediate_size, 1 << 20),
            ("layer count", self.num_layers, 1 << 12),
            ("head count", self.num_heads, 1 << 12),
            ("key/value head count", self.num_kv_heads, 1 << 12),
            ("head size", self.head_dim, 1 << 12),
        ];
        if let Some((what, v, max)) = dims.iter().find(|(_, v, max)| *v == 0 || v > max) {
            return Some(format!("{what} {v} is outside 1..={max}"));
        }
        (!self.num_heads.is_multiple_of(self.num_kv_heads)).then(|| {
            format!(
                "{} heads do not group into {} key/value heads",
                self.num_heads, self.num_kv_heads
            )
        })
    }

    /// Number of parameters in the quantizable projections (q, k, v, o, gate, up, down) of all blocks.
    pub fn projection_params(&self) -> usize {
        let d = self.hidden_size;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let per_layer = d * q + 2 * d * kv + q * d + 3 * d * self.intermediate_size;
        per_layer * self.num_layers
    }
}

fn layer_windows(
    family: Family,
    raw: &HfConfig,
    n: usize,
    path: &Path,
) -> Result<Vec<Option<usize>>> {
    let window = match family {
        Family::Qwen2 if raw.use_sliding_window != Some(true) => None,
        _ => raw.sliding_window,
    };
    if let Some(types) = &raw.layer_types {
        if types.len() != n {
            return Err(ModelError::invalid(
                path,
                format!(
                    "layer_types has {} entries, expected num_hidden_layers = {n}",
                    types.len()
                ),
            ));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                "full_attention" => Ok(None),
                "sliding_attention" => Ok(window),
                other => Err(ModelError::invalid(
                    path,
                    format!("unknown layer type `{other}`"),
                )),
            })
            .collect();
    }
    Ok((0..n)
        .map(|i| match family {
            Family::Gemma2 if i % 2 == 0 => window,
            Family::Gemma2 | Family::Gemma | Family::Llama => None,
            Family::Mistral => window,
            Family::Qwen2 => window.filter(|_| i >= raw.max_window_layers.unwrap_or(n)),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama31_rope_scaling_and_defaults_are_read() {
        let text = r#"{"model_type":"llama","vocab_size":128256,"hidden_size":4096,"intermediate_size":14336,
            "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"rms_norm_eps":1e-5,
            "rope_theta":500000.0,"rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
            "original_max_position_embeddings":8192,"rope_type":"llama3"},"bos_token_id":128000,
            "eos_token_id":[128001,128008,128009]}"#;
        let c = ModelConfig::from_hf_json(Path::new("config.json"), text).unwrap();
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.rope_scaling.unwrap().factor, 8.0);
        assert!(!c.tie_word_embeddings);
        assert_eq!(c.eos_token_ids, vec![128001, 128008, 128009]);
    }

    #[test]
    fn unknown_architecture_names_the_file() {
        let text = r#"{"model_type":"gpt2","vocab_size":1,"hidden_size":1,"intermediate_size":1,
            "num_hidden_layers":1,"num_attention_heads":1}"#;
        let err = ModelConfig::from_hf_json(Path::new("m/config.json"), text).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("m/config.json") && msg.contains("gpt2"),
            "{msg}"
        );
    }

    #[test]
    fn gemma2_alternates_sliding_window() {
        let text = r#"{"model_type":"gemma2","vocab_size":256000,"hidden_size":2304,"intermediate_size":9216,
            "num_hidden_layers":4,"num_attention_heads":8,"num_key_value_heads":4,"head_dim":256,
            "sliding_window":4096,"query_pre_attn_scalar":256,"attn_logit_softcapping":50.0,
            "final_logit_softcapping":30.0}"#;
        let c = ModelConfig::from_hf_json(Path::new("config.json"), text).unwrap();
        assert_eq!(c.layer_windows, vec![Some(4096), None, Some(4096), None]);
        assert!(c.tie_word_embeddings && c.norm_plus_one && c.sandwich_norms);
        assert_eq!(c.activation, Activation::GeluTanh);
    }
}
