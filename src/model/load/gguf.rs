//! GGUF files (llama.cpp): architecture from metadata, tensors kept in their stored quantized types.
//! llama-architecture GGUFs store q/k rows permuted for interleaved rope; the decoder uses interleaved
//! rope for them and LoRA export/import (peft.rs) converts q/k rows to and from HF order.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};

use crate::model::config::{Activation, Family, ModelConfig};
use crate::model::error::{ModelError, Result};
use crate::model::quant::frozen::FrozenWeight;
use crate::model::quant::weights::{Quant, TensorSource};

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: RefCell<BufReader<File>>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        crate::store::gguf_header::check(path).map_err(|what| ModelError::corrupt(path, what))?;
        let file = File::open(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader)
            .map_err(|e| ModelError::corrupt(path, format!("not a valid GGUF file ({e})")))?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader: RefCell::new(reader),
        })
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    fn meta(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn meta_usize(&self, key: &str) -> Result<usize> {
        let v = self.meta(key).ok_or_else(|| {
            ModelError::invalid(&self.path, format!("metadata `{key}` is missing"))
        })?;
        v.to_u32()
            .map(|x| x as usize)
            .or_else(|_| v.to_u64().map(|x| x as usize))
            .map_err(|_| {
                ModelError::invalid(&self.path, format!("metadata `{key}` is not an integer"))
            })
    }

    fn meta_f64(&self, key: &str) -> Option<f64> {
        self.meta(key).and_then(|v| v.to_f32().map(f64::from).ok())
    }

    /// Reads the architecture from GGUF metadata.
    pub fn config(&self) -> Result<ModelConfig> {
        let arch = self
            .meta("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or_else(|| {
                ModelError::invalid(&self.path, "metadata `general.architecture` is missing")
            })?;
        let family = Family::parse(&arch).ok_or_else(|| ModelError::UnknownArchitecture {
            path: self.path.clone(),
            found: arch.clone(),
        })?;
        let k = |s: &str| format!("{arch}.{s}");
        let hidden = self.meta_usize(&k("embedding_length"))?;
        let heads = self.meta_usize(&k("attention.head_count"))?;
        let kv_heads = self
            .meta_usize(&k("attention.head_count_kv"))
            .unwrap_or(heads);
        let head_dim = self
            .meta_usize(&k("attention.key_length"))
            .unwrap_or(hidden / heads.max(1));
        let layers = self.meta_usize(&k("block_count"))?;
        let vocab = self
            .content
            .tensor_infos
            .get("token_embd.weight")
            .map(|t| t.shape.dims()[0])
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                name: "token_embd.weight".into(),
            })?;
        let gemma = matches!(family, Family::Gemma | Family::Gemma2);
        let window = self.meta_usize(&k("attention.sliding_window")).ok();
        let rope_freq_factors = match self.content.tensor_infos.get("rope_freqs.weight") {
            Some(_) => Some(
                self.dense("rope_freqs.weight", &Device::Cpu)?
                    .to_vec1::<f32>()?,
            ),
            None => None,
        };
        let token = |key: &str| self.meta(key).and_then(|v| v.to_u32().ok());
        Ok(ModelConfig {
            family,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: self.meta_usize(&k("feed_forward_length"))?,
            num_layers: layers,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            rms_norm_eps: self
                .meta_f64(&k("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-6),
            rope_theta: self.meta_f64(&k("rope.freq_base")).unwrap_or(10_000.0),
            rope_scaling: None,
            rope_freq_factors,
            rope_interleaved: family == Family::Llama,
            max_position_embeddings: self.meta_usize(&k("context_length")).unwrap_or(4096),
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            qkv_bias: self.content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            o_bias: self
                .content
                .tensor_infos
                .contains_key("blk.0.attn_output.bias"),
            activation: if gemma {
                Activation::GeluTanh
            } else {
                Activation::Silu
            },
            // llama.cpp's converter stores Gemma norms as 1 + w already.
            norm_plus_one: false,
            scale_embeddings: gemma,
            sandwich_norms: family == Family::Gemma2,
            attn_logit_softcap: self.meta_f64(&k("attn_logit_softcapping")),
            final_logit_softcap: self.meta_f64(&k("final_logit_softcapping")),
            query_pre_attn_scalar: head_dim as f64,
            layer_windows: (0..layers)
                .map(|i| {
                    if family == Family::Gemma2 && i % 2 == 0 {
                        window
                    } else {
                        None
                    }
                })
                .collect(),
            bos_token_id: token("tokenizer.ggml.bos_token_id"),
            eos_token_ids: token("tokenizer.ggml.eos_token_id").into_iter().collect(),
        })
    }

    fn read(&self, gguf_name: &str, device: &Device) -> Result<candle_core::quantized::QTensor> {
        if !self.content.tensor_infos.contains_key(gguf_name) {
            return Err(ModelError::MissingTensor {
                path: self.path.clone(),
                name: gguf_name.to_string(),
            });
        }
        let mut reader = self.reader.borrow_mut();
        self.content
            .tensor(&mut *reader, gguf_name, device)
            .map_err(|e| ModelError::corrupt(&self.path, format!("tensor `{gguf_name}`: {e}")))
    }
}

/// Maps a Hugging Face tensor name to its llama.cpp name.
pub fn gguf_name(hf: &str) -> String {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return (*g).to_string();
    }
    let Some(rest) = hf.strip_prefix("model.layers.") else {
        return hf.to_string();
    };
    let (layer, rest) = rest.split_once('.').unwrap_or((rest, ""));
    let (module, suffix) = rest.rsplit_once('.').unwrap_or((rest, ""));
    let g = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "post_attention_layernorm" => "post_attention_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => other,
    };
    format!("blk.{layer}.{g}.{suffix}")
}

impl GgufFile {
    /// The GGUF name for `hf`, given that non-sandwich families call the pre-FF norm `ffn_norm`.
    fn resolve(&self, hf: &str) -> String {
        let g = gguf_name(hf);
        if g.ends_with("post_attention_norm.weight") && !self.content.tensor_infos.contains_key(&g)
        {
            return g.replace("post_attention_norm", "ffn_norm");
        }
        g
    }
}

impl TensorSource for GgufFile {
    fn file_of(&self, _name: &str) -> PathBuf {
        self.path.clone()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.content
            .tensor_infos
            .get(&self.resolve(name))
            .map(|t| t.shape.dims().to_vec())
    }

    fn dense(&self, name: &str, device: &Device) -> Result<Tensor> {
        let name = if name.contains('.') && name.starts_with("model.") || name == "lm_head.weight" {
            self.resolve(name)
        } else {
            name.to_string()
        };
        Ok(self
            .read(&name, device)?
            .dequantize(device)?
            .to_dtype(DType::F32)?)
    }

    fn frozen(&self, name: &str, _quant: Quant, device: &Device) -> Result<FrozenWeight> {
        Ok(FrozenWeight::Ggml(Arc::new(
            self.read(&self.resolve(name), device)?,
        )))
    }

    fn embedding(&self, name: &str, device: &Device) -> Result<FrozenWeight> {
        self.frozen(name, Quant::None, device)
    }
}
