//! Assembles a `Decoder` from a config and a tensor source, checking every shape against the config.

use candle_core::{Device, Tensor};

use crate::model::config::ModelConfig;
use crate::model::decoder::layers::RmsNorm;
use crate::model::decoder::lora::AdaptedLinear;
use crate::model::decoder::{Block, Decoder};
use crate::model::error::{ModelError, Result};
use crate::model::quant::frozen::{FrozenLinear, FrozenWeight};
use crate::model::quant::weights::{Quant, TensorSource};
use crate::model::target::Target;

struct Builder<'a> {
    cfg: &'a ModelConfig,
    src: &'a dyn TensorSource,
    quant: Quant,
    device: &'a Device,
}

impl Builder<'_> {
    fn check(&self, name: &str, expected: &[usize]) -> Result<()> {
        match self.src.shape(name) {
            None => Err(ModelError::MissingTensor {
                path: self.src.file_of(name),
                name: name.to_string(),
            }),
            Some(found) if found != expected => Err(ModelError::ShapeMismatch {
                path: self.src.file_of(name),
                name: name.to_string(),
                expected: expected.to_vec(),
                found,
            }),
            Some(_) => Ok(()),
        }
    }

    fn norm(&self, name: &str) -> Result<RmsNorm> {
        self.check(name, &[self.cfg.hidden_size])?;
        let w = self.src.dense(name, self.device)?;
        let weight = if self.cfg.norm_plus_one {
            (w + 1.0)?
        } else {
            w
        };
        Ok(RmsNorm {
            weight,
            eps: self.cfg.rms_norm_eps,
        })
    }

    fn bias(&self, name: &str, size: usize, present: bool) -> Result<Option<Tensor>> {
        if !present {
            return Ok(None);
        }
        self.check(name, &[size])?;
        Ok(Some(self.src.dense(name, self.device)?))
    }

    fn linear(&self, prefix: &str, t: Target, out: usize, inp: usize) -> Result<AdaptedLinear> {
        let name = format!("{prefix}.{}.weight", t.block_path());
        self.check(&name, &[out, inp])?;
        let weight = self.src.frozen(&name, self.quant, self.device)?;
        #[cfg(feature = "cuda")]
        let weight = crate::model::quant::nf4_cuda::place_on_device(weight, self.device)?;
        let has_bias = match t {
            Target::Q | Target::K | Target::V => self.cfg.qkv_bias,
            Target::O => self.cfg.o_bias,
            _ => false,
        };
        let bias = self.bias(&format!("{prefix}.{}.bias", t.block_path()), out, has_bias)?;
        Ok(AdaptedLinear {
            base: FrozenLinear::new(weight, bias),
            lora: None,
        })
    }

    fn block(&self, i: usize) -> Result<Block> {
        let c = self.cfg;
        let p = format!("model.layers.{i}");
        let (d, q, kv, ff) = (
            c.hidden_size,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
            c.intermediate_size,
        );
        let (post_attn_norm, pre_ff, post_ff_norm) = if c.sandwich_norms {
            (
                Some(self.norm(&format!("{p}.post_attention_layernorm.weight"))?),
                self.norm(&format!("{p}.pre_feedforward_layernorm.weight"))?,
                Some(self.norm(&format!("{p}.post_feedforward_layernorm.weight"))?),
            )
        } else {
            (
                None,
                self.norm(&format!("{p}.post_attention_layernorm.weight"))?,
                None,
            )
        };
        Ok(Block {
            input_norm: self.norm(&format!("{p}.input_layernorm.weight"))?,
            post_attn_norm,
            pre_ff_norm: pre_ff,
            post_ff_norm,
            q: self.linear(&p, Target::Q, q, d)?,
            k: self.linear(&p, Target::K, kv, d)?,
            v: self.linear(&p, Target::V, kv, d)?,
            o: self.linear(&p, Target::O, d, q)?,
            gate: self.linear(&p, Target::Gate, ff, d)?,
            up: self.linear(&p, Target::Up, ff, d)?,
            down: self.linear(&p, Target::Down, d, ff)?,
        })
    }
}

/// Builds the decoder; projections are stored per `quant` unless the source is already quantized.
pub fn build_decoder(
    cfg: ModelConfig,
    src: &dyn TensorSource,
    quant: Quant,
    device: &Device,
) -> Result<Decoder> {
    let b = Builder {
        cfg: &cfg,
        src,
        quant,
        device,
    };
    let embed_name = "model.embed_tokens.weight";
    b.check(embed_name, &[cfg.vocab_size, cfg.hidden_size])?;
    let tied = cfg.tie_word_embeddings || src.shape("lm_head.weight").is_none();
    let embed = src.embedding(embed_name, embedding_device(tied, device))?;
    let blocks = (0..cfg.num_layers)
        .map(|i| b.block(i))
        .collect::<Result<Vec<_>>>()?;
    let final_norm = b.norm("model.norm.weight")?;
    let head_weight: FrozenWeight = if tied {
        embed.clone()
    } else {
        b.check("lm_head.weight", &[cfg.vocab_size, cfg.hidden_size])?;
        src.embedding("lm_head.weight", device)?
    };
    Ok(Decoder {
        config: cfg,
        embed,
        blocks,
        final_norm,
        head: FrozenLinear::new(head_weight, None),
        device: device.clone(),
        bf16_head: Default::default(),
    })
}

/// Where the embedding table lives: a table that is not also the output head stays in host memory when the
/// model runs on a GPU. It is frozen and only ever read a row per token (`Decoder::embed` gathers there and
/// copies the rows over), so the device keeps its memory for the step: 1 GiB at Llama 3's 128,256 x 4,096
/// in bf16, an eighth of a 2 x 2048 QLoRA step at 8B dims.
fn embedding_device(tied: bool, device: &Device) -> &Device {
    match device.is_cuda() && !tied {
        true => &Device::Cpu,
        false => device,
    }
}
