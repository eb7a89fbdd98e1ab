//! LoRA adapters on a decoder: creation, the trainable tensors by PEFT name, and save/load in PEFT's layout
//! (adapter_model.safetensors + adapter_config.json) so adapters move between qlab and Hugging Face PEFT.
//! GGUF llama bases keep q/k rows permuted for interleaved rope: B rows are un-permuted on export and
//! permuted back on import.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor, Var};
use serde_json::json;

use super::safetensors::SafetensorsFiles;
use crate::model::decoder::Decoder;
use crate::model::decoder::lora::{LoraAdapter, LoraSpec};
use crate::model::error::{ModelError, Result};
use crate::model::quant::weights::TensorSource;
use crate::model::target::Target;

const ADAPTER_FILE: &str = "adapter_model.safetensors";
const CONFIG_FILE: &str = "adapter_config.json";

/// PEFT's key of a LoRA tensor: `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`.
pub fn peft_key(layer: usize, target: Target, which: char) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.lora_{which}.weight",
        target.block_path()
    )
}

/// Row order converting llama.cpp's interleaved q/k rows to HF's half split (`to_hf`) or back.
fn rope_row_permutation(heads: usize, head_dim: usize, to_hf: bool) -> Vec<u32> {
    let half = head_dim / 2;
    let mut idx = vec![0u32; heads * head_dim];
    for h in 0..heads {
        for part in 0..2 {
            for i in 0..half {
                let hf = h * head_dim + part * half + i;
                let gg = h * head_dim + 2 * i + part;
                if to_hf {
                    idx[hf] = gg as u32;
                } else {
                    idx[gg] = hf as u32;
                }
            }
        }
    }
    idx
}

impl Decoder {
    /// Heads whose rows need the rope permutation when moving B between this model and HF order.
    fn permuted_heads(&self, t: Target) -> Option<usize> {
        match (self.config.rope_interleaved, t) {
            (true, Target::Q) => Some(self.config.num_heads),
            (true, Target::K) => Some(self.config.num_kv_heads),
            _ => None,
        }
    }

    fn reorder_rows(&self, b: &Tensor, t: Target, to_hf: bool) -> Result<Tensor> {
        match self.permuted_heads(t) {
            Some(heads) => {
                let idx = rope_row_permutation(heads, self.config.head_dim, to_hf);
                let idx = Tensor::new(idx.as_slice(), b.device())?;
                Ok(b.index_select(&idx, 0)?)
            }
            None => Ok(b.clone()),
        }
    }

    /// Adds fresh adapters (A Kaiming-uniform from `spec.seed`, B zero) on `spec.targets` of every block.
    pub fn add_lora(&mut self, spec: &LoraSpec) -> Result<()> {
        if spec.rank == 0 {
            return Err(ModelError::Usage("LoRA rank must be at least 1".into()));
        }
        let device = self.device.clone();
        for (i, blk) in self.blocks.iter_mut().enumerate() {
            for &t in &spec.targets {
                let lin = blk.linear_mut(t);
                let (out, inp) = lin.base.weight.dims2()?;
                let seed =
                    spec.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((i as u64) << 8 | t as u64);
                lin.lora = Some(LoraAdapter::init(inp, out, spec, seed, &device)?);
            }
        }
        Ok(())
    }

    /// Every trainable LoRA tensor with its PEFT key, in a stable order (layer, target, A then B).
    pub fn lora_params(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (i, blk) in self.blocks.iter().enumerate() {
            for t in Target::ALL {
                if let Some(l) = &blk.linear(t).lora {
                    out.push((peft_key(i, t, 'A'), l.a.clone()));
                    out.push((peft_key(i, t, 'B'), l.b.clone()));
                }
            }
        }
        out
    }

    /// Writes the adapters in PEFT layout into `dir` (created if needed).
    pub fn save_peft(&self, dir: &Path, spec: &LoraSpec, base_model: Option<&str>) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (i, blk) in self.blocks.iter().enumerate() {
            for t in Target::ALL {
                if let Some(l) = &blk.linear(t).lora {
                    tensors.push((peft_key(i, t, 'A'), l.a.as_tensor().to_dtype(DType::F32)?));
                    let b = self.reorder_rows(l.b.as_tensor(), t, true)?;
                    tensors.push((peft_key(i, t, 'B'), b.to_dtype(DType::F32)?.contiguous()?));
                }
            }
        }
        let data: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
            .iter()
            .map(|(k, t)| {
                let v = t.flatten_all()?.to_vec1::<f32>()?;
                Ok((
                    k.clone(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    t.dims().to_vec(),
                ))
            })
            .collect::<candle_core::Result<_>>()?;
        let views = data
            .iter()
            .map(|(k, bytes, shape)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .map(|v| (k.clone(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| ModelError::Usage(format!("cannot serialise adapter: {e}")))?;
        let bytes = safetensors::serialize(views, None)
            .map_err(|e| ModelError::Usage(format!("cannot serialise adapter: {e}")))?;
        let file = dir.join(ADAPTER_FILE);
        crate::store::atomic::write_atomic(&file, &bytes)
            .map_err(|e| ModelError::invalid(&file, e.to_string()))?;
        let targets: Vec<&str> = spec.targets.iter().map(|t| t.module_name()).collect();
        let config = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": spec.rank,
            "lora_alpha": spec.alpha,
            "lora_dropout": spec.dropout,
            "use_rslora": spec.rslora,
            "target_modules": targets,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "use_dora": false,
            "modules_to_save": null,
            "rank_pattern": {},
            "alpha_pattern": {},
        });
        let cfg = dir.join(CONFIG_FILE);
        crate::store::atomic::write_json_atomic(&cfg, &config)
            .map_err(|e| ModelError::invalid(&cfg, e.to_string()))
    }

    /// Loads PEFT adapters from `dir` onto this decoder (replacing any present) and returns their settings.
    pub fn load_peft(&mut self, dir: &Path) -> Result<LoraSpec> {
        let spec = read_adapter_config(&dir.join(CONFIG_FILE))?;
        let file = dir.join(ADAPTER_FILE);
        if !file.exists() {
            let pickle = dir.join("adapter_model.bin");
            if pickle.exists() {
                return Err(ModelError::PickleRefused { path: pickle });
            }
        }
        let st = SafetensorsFiles::open(vec![file.clone()])?;
        let device = self.device.clone();
        let mut adapters = HashMap::new();
        for i in 0..self.blocks.len() {
            for &t in &spec.targets {
                let (out, inp) = self.blocks[i].linear(t).base.weight.dims2()?;
                let load = |which: char, shape: [usize; 2]| -> Result<Tensor> {
                    let key = peft_key(i, t, which);
                    match st.shape(&key) {
                        None => Err(ModelError::MissingTensor {
                            path: file.clone(),
                            name: key,
                        }),
                        Some(found) if found != shape => Err(ModelError::ShapeMismatch {
                            path: file.clone(),
                            name: key,
                            expected: shape.to_vec(),
                            found,
                        }),
                        Some(_) => st.dense(&key, &device),
                    }
                };
                let a = load('A', [spec.rank, inp])?;
                let b = self.reorder_rows(&load('B', [out, spec.rank])?, t, false)?;
                adapters.insert((i, t), (a, b));
            }
        }
        for (i, blk) in self.blocks.iter_mut().enumerate() {
            for t in Target::ALL {
                blk.linear_mut(t).lora = match adapters.remove(&(i, t)) {
                    Some((a, b)) => Some(LoraAdapter {
                        a: Var::from_tensor(&a)?,
                        b: Var::from_tensor(&b.contiguous()?)?,
                        scale: spec.scale(),
                        dropout: spec.dropout,
                    }),
                    None => None,
                };
            }
        }
        Ok(spec)
    }
}

fn read_adapter_config(path: &Path) -> Result<LoraSpec> {
    let text = crate::model::error::read_capped(path, "adapter_config.json")?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::corrupt(path, e))?;
    let bad = |what: &str| ModelError::invalid(path, what.to_string());
    if v["peft_type"].as_str().is_some_and(|p| p != "LORA") {
        return Err(bad("peft_type must be \"LORA\""));
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if v[key].as_object().is_some_and(|o| !o.is_empty()) {
            return Err(bad(&format!("`{key}` (per-module ranks) is not supported")));
        }
    }
    if v["use_dora"].as_bool() == Some(true) {
        return Err(bad("DoRA adapters are not supported"));
    }
    let rank = v["r"]
        .as_u64()
        .ok_or_else(|| bad("`r` must be a positive integer"))? as usize;
    let alpha = v["lora_alpha"]
        .as_f64()
        .ok_or_else(|| bad("`lora_alpha` must be a number"))?;
    let names = v["target_modules"]
        .as_array()
        .ok_or_else(|| bad("`target_modules` must be a list of module names"))?;
    let mut targets = Vec::new();
    for n in names {
        let n = n.as_str().unwrap_or_default();
        targets.push(Target::parse(n).ok_or_else(|| {
            bad(&format!("target module `{n}` is not one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"))
        })?);
    }
    targets.sort();
    Ok(LoraSpec {
        targets,
        rank,
        alpha,
        rslora: v["use_rslora"].as_bool().unwrap_or(false),
        dropout: v["lora_dropout"].as_f64().unwrap_or(0.0),
        seed: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_permutations_are_inverse() {
        let to_hf = rope_row_permutation(3, 8, true);
        let to_gg = rope_row_permutation(3, 8, false);
        for (r, &g) in to_gg.iter().enumerate() {
            assert_eq!(to_hf[g as usize] as usize, r);
        }
        // HF row 4 (second half, i = 0) of head 0 comes from interleaved row 1.
        assert_eq!(to_hf[4], 1);
    }
}
