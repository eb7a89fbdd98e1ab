//! A tiny deterministic model with a frozen base and one LoRA pair, implementing [`TrainableModel`]: it lets
//! tests and benchmarks exercise the trainer, checkpoints and resume without loading a real decoder.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::TrainError;
use super::data::examples::TextEncoder;
use super::model::{Batch, TrainableModel};

/// Sizes of the toy model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToyConfig {
    pub vocab: usize,
    pub hidden: usize,
    pub rank: usize,
    pub seed: u64,
}

/// embedding -> tanh(x W^T + x A^T B^T) -> head, with embedding, W and head frozen and A, B trained.
pub struct ToyModel {
    embed: Tensor,
    w: Tensor,
    head: Tensor,
    lora_a: Var,
    lora_b: Var,
}

fn uniform(rng: &mut ChaCha8Rng, shape: (usize, usize), scale: f32) -> Result<Tensor, TrainError> {
    let data: Vec<f32> = (0..shape.0 * shape.1)
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
        .collect();
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

impl ToyModel {
    /// Random weights from `config.seed` (so two instances are identical); B starts at zero as in LoRA.
    pub fn new(config: ToyConfig) -> Result<Self, TrainError> {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let (v, h, r) = (config.vocab, config.hidden, config.rank);
        Ok(ToyModel {
            embed: uniform(&mut rng, (v, h), 1.0)?,
            w: uniform(&mut rng, (h, h), 0.5)?,
            head: uniform(&mut rng, (v, h), 0.5)?,
            lora_a: Var::from_tensor(&uniform(&mut rng, (r, h), 0.3)?)?,
            lora_b: Var::from_tensor(&Tensor::zeros(
                (h, r),
                candle_core::DType::F32,
                &Device::Cpu,
            )?)?,
        })
    }

    fn loss(&self, batch: &Batch) -> Result<Tensor, TrainError> {
        let (_, t) = batch.input_ids.dims2()?;
        let inputs = batch.input_ids.narrow(1, 0, t - 1)?.flatten_all()?;
        let targets = batch.input_ids.narrow(1, 1, t - 1)?.flatten_all()?;
        let mask = batch.loss_mask.narrow(1, 1, t - 1)?.flatten_all()?;
        let x = self.embed.index_select(&inputs, 0)?;
        let lora = x
            .matmul(&self.lora_a.as_tensor().t()?)?
            .matmul(&self.lora_b.as_tensor().t()?)?;
        let hidden = (x.matmul(&self.w.t()?)? + lora)?.tanh()?;
        let logp = candle_nn::ops::log_softmax(&hidden.matmul(&self.head.t()?)?, D::Minus1)?;
        let picked = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
        let count = mask.sum_all()?.to_scalar::<f32>()?.max(1.0);
        Ok(((picked * mask)?.sum_all()?.neg()? / f64::from(count))?)
    }
}

impl TrainableModel for ToyModel {
    fn trainable(&self) -> Vec<(String, Var)> {
        vec![
            ("lora_A".to_string(), self.lora_a.clone()),
            ("lora_B".to_string(), self.lora_b.clone()),
        ]
    }

    fn loss_and_grads(&self, batch: &Batch) -> Result<(f32, Vec<Tensor>), TrainError> {
        let loss = self.loss(batch)?;
        let grads = loss.backward()?;
        let grad = |v: &Var| -> Result<Tensor, TrainError> {
            match grads.get(v.as_tensor()) {
                Some(g) => Ok(g.detach()),
                None => Ok(v.as_tensor().zeros_like()?),
            }
        };
        Ok((
            loss.to_scalar::<f32>()?,
            vec![grad(&self.lora_a)?, grad(&self.lora_b)?],
        ))
    }

    fn save_adapter(&self, dir: &Path) -> Result<(), TrainError> {
        let tensors: HashMap<String, Tensor> = self
            .trainable()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        let file = dir.join("adapter_model.safetensors");
        candle_core::safetensors::save(&tensors, &file)?;
        let config = serde_json::json!({"peft_type": "LORA", "r": self.lora_a.dims()[0], "lora_alpha": self.lora_a.dims()[0]});
        let path = dir.join("adapter_config.json");
        std::fs::write(&path, config.to_string()).map_err(|e| TrainError::io(&path, e))
    }

    fn load_adapter(&mut self, dir: &Path) -> Result<(), TrainError> {
        let mut tensors =
            candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu)?;
        for (name, var) in self.trainable() {
            let t = tensors
                .remove(&name)
                .ok_or_else(|| TrainError::State(format!("{}: no tensor {name}", dir.display())))?;
            var.set(&t)?;
        }
        Ok(())
    }

    fn device(&self) -> Device {
        Device::Cpu
    }
}

/// One token per byte and EOS = 256: the toy model's tokenizer (vocabulary 257).
#[derive(Debug, Clone, Copy, Default)]
pub struct ByteEncoder;

impl TextEncoder for ByteEncoder {
    fn encode(&self, text: &str) -> Result<(Vec<u32>, Vec<usize>), String> {
        Ok((
            text.bytes().map(u32::from).collect(),
            (0..text.len()).collect(),
        ))
    }
    fn eos_id(&self) -> u32 {
        256
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_lora_tensors_get_a_gradient_after_one_update() {
        let model = ToyModel::new(ToyConfig {
            vocab: 16,
            hidden: 8,
            rank: 2,
            seed: 1,
        })
        .unwrap();
        let batch = Batch {
            input_ids: Tensor::new(&[[1u32, 2, 3, 4]], &Device::Cpu).unwrap(),
            loss_mask: Tensor::new(&[[0f32, 1.0, 1.0, 0.0]], &Device::Cpu).unwrap(),
            attention_mask: Tensor::new(&[[1f32, 1.0, 1.0, 1.0]], &Device::Cpu).unwrap(),
            tokens: 4,
            rows: vec![1],
        };
        let (loss, grads) = model.loss_and_grads(&batch).unwrap();
        assert!(loss.is_finite() && loss > 0.0);
        // B is zero, so A's gradient is zero at first; B's is not.
        let norm = |t: &Tensor| {
            t.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(norm(&grads[1]) > 0.0);
        model
            .lora_b
            .set(&(grads[1].clone() * -1.0).unwrap())
            .unwrap();
        let (_, grads) = model.loss_and_grads(&batch).unwrap();
        assert!(norm(&grads[0]) > 0.0);
    }
}
