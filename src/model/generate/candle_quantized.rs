//! candle-transformers' own quantized models (`quantized_llama`, `quantized_qwen2`) behind [`CausalLm`]: the
//! references that qlab's decode speed is measured against on the same GGUF files. They have no padding
//! mask, so a padded batch is refused, and a batched prompt is fed one position at a time (their batched
//! prefill fails).

use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Tensor};
use candle_transformers::models::{quantized_llama, quantized_qwen2};

use super::CausalLm;

/// What the wrapper needs of one of candle-transformers' quantized models.
pub trait CandleGguf: Sized + Send {
    /// The model's module name in candle-transformers, for messages.
    const NAME: &'static str;
    fn from_gguf(
        content: Content,
        file: &mut std::fs::File,
        device: &Device,
    ) -> candle_core::Result<Self>;
    fn forward(&mut self, ids: &Tensor, offset: usize) -> candle_core::Result<Tensor>;
    fn clear_kv_cache(&mut self);
}

macro_rules! candle_gguf {
    ($module:ident) => {
        impl CandleGguf for $module::ModelWeights {
            const NAME: &'static str = stringify!($module);
            fn from_gguf(
                content: Content,
                file: &mut std::fs::File,
                device: &Device,
            ) -> candle_core::Result<Self> {
                $module::ModelWeights::from_gguf(content, file, device)
            }
            fn forward(&mut self, ids: &Tensor, offset: usize) -> candle_core::Result<Tensor> {
                $module::ModelWeights::forward(self, ids, offset)
            }
            fn clear_kv_cache(&mut self) {
                $module::ModelWeights::clear_kv_cache(self)
            }
        }
    };
}

candle_gguf!(quantized_llama);
candle_gguf!(quantized_qwen2);

/// candle's `quantized_llama` on a llama-architecture GGUF file.
pub type CandleQuantizedLlama = CandleQuantized<quantized_llama::ModelWeights>;
/// candle's `quantized_qwen2` on a qwen2-architecture GGUF file.
pub type CandleQuantizedQwen2 = CandleQuantized<quantized_qwen2::ModelWeights>;

pub struct CandleQuantized<M> {
    model: M,
    device: Device,
}

impl<M: CandleGguf> CandleQuantized<M> {
    /// Load a GGUF file of the model's architecture (weights stay quantized as stored).
    pub fn load(path: &Path, device: &Device) -> candle_core::Result<Self> {
        crate::store::gguf_header::check(path)
            .map_err(|e| candle_core::Error::msg(format!("{}: {e}", path.display())))?;
        let mut file = std::fs::File::open(path)
            .map_err(|e| candle_core::Error::msg(format!("{}: {e}", path.display())))?;
        let content = Content::read(&mut file).map_err(|e| e.with_path(path))?;
        let model = M::from_gguf(content, &mut file, device)?;
        Ok(CandleQuantized {
            model,
            device: device.clone(),
        })
    }
}

impl<M: CandleGguf> CausalLm for CandleQuantized<M> {
    fn forward(
        &mut self,
        ids: &Tensor,
        offset: usize,
        attend: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        if let Some(mask) = attend
            && mask.min_all()?.to_scalar::<u8>()? == 0
        {
            candle_core::bail!(
                "candle's {} has no padding mask: give prompts of equal length",
                M::NAME
            );
        }
        let (batch, seq) = ids.dims2()?;
        if batch == 1 || seq == 1 {
            return self.model.forward(ids, offset);
        }
        // Its last-position slice of a batched prompt is not contiguous and its quantized matmul refuses
        // it: feed a batched prompt one position at a time instead.
        let mut logits = None;
        for i in 0..seq {
            let step = ids.narrow(1, i, 1)?.contiguous()?;
            logits = Some(self.model.forward(&step, offset + i)?);
        }
        logits.ok_or_else(|| candle_core::Error::msg("empty prompt"))
    }

    fn clear_cache(&mut self) {
        self.model.clear_kv_cache();
    }

    fn device(&self) -> &Device {
        &self.device
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::generate::{GenerateOptions, Sampling, generate, open_model};
    use crate::model::{Family, Quant};

    /// One block of the benchmark's file (scripts/make_qwen2_q4km.py): qlab reads Qwen2-0.5B's dimensions
    /// from it, candle's model decodes a batch from it, and both give the same next-token logits.
    #[test]
    fn qlab_and_candle_read_the_same_generated_qwen2_gguf() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qwen2.gguf");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make_qwen2_q4km.py");
        let made = std::process::Command::new("python3")
            .arg(&script)
            .arg(&path)
            .args(["--layers", "1"])
            .status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("skipped: python3 with the gguf package is needed to write the file");
            return;
        }
        let mut ours = open_model(&path, Quant::None, None, &Device::Cpu).unwrap();
        let c = &ours.decoder().config;
        assert_eq!(c.family, Family::Qwen2);
        let dims = (
            c.hidden_size,
            c.intermediate_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
        );
        assert_eq!(dims, (896, 4864, 14, 2, 64));
        assert_eq!((c.vocab_size, c.rope_theta), (151_936, 1e6));
        assert!(c.tie_word_embeddings && c.qkv_bias);
        let mut peer = CandleQuantizedQwen2::load(&path, &Device::Cpu).unwrap();
        let ids = Tensor::new(&[[1u32, 2, 3, 4]], &Device::Cpu).unwrap();
        let a = ours.forward(&ids, 0, None).unwrap();
        let b = peer.forward(&ids, 0, None).unwrap();
        let max_abs = |t: &Tensor| {
            t.abs()
                .and_then(|t| t.max_all())
                .and_then(|t| t.to_scalar::<f32>())
        };
        let (scale, diff) = (max_abs(&b).unwrap(), max_abs(&(a - &b).unwrap()).unwrap());
        assert!(
            diff <= 0.05 * scale,
            "logits differ by {diff} (largest {scale})"
        );
        let greedy = GenerateOptions {
            max_new_tokens: 3,
            sampling: Sampling::Greedy,
            stop_ids: vec![],
            pad_id: 0,
        };
        let batch = [vec![1, 2, 3], vec![4, 5, 6]];
        let (out, _) = generate(&mut peer, &batch, &greedy, &mut |_| {}).unwrap();
        assert!(out.iter().all(|g| g.ids.len() == 3));
        let padded = generate(&mut peer, &[vec![1, 2, 3], vec![4]], &greedy, &mut |_| {});
        assert!(padded.unwrap_err().to_string().contains("padding mask"));
    }
}
