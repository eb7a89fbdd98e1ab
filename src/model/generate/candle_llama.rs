//! candle-transformers' own `quantized_llama` behind [`CausalLm`]: the reference that qlab's decode speed is
//! measured against on the same GGUF file. It has no padding mask, so a padded batch is refused, and a
//! batched prompt is fed one position at a time (its batched prefill fails).

use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;

use super::CausalLm;

pub struct CandleQuantizedLlama {
    model: ModelWeights,
    device: Device,
}

impl CandleQuantizedLlama {
    /// Load a llama-architecture GGUF file (weights stay quantized as stored).
    pub fn load(path: &Path, device: &Device) -> candle_core::Result<Self> {
        crate::store::gguf_header::check(path)
            .map_err(|e| candle_core::Error::msg(format!("{}: {e}", path.display())))?;
        let mut file = std::fs::File::open(path)
            .map_err(|e| candle_core::Error::msg(format!("{}: {e}", path.display())))?;
        let content = Content::read(&mut file).map_err(|e| e.with_path(path))?;
        let model = ModelWeights::from_gguf(content, &mut file, device)?;
        Ok(CandleQuantizedLlama {
            model,
            device: device.clone(),
        })
    }
}

impl CausalLm for CandleQuantizedLlama {
    fn forward(
        &mut self,
        ids: &Tensor,
        offset: usize,
        attend: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let padded = match attend {
            Some(mask) => mask.min_all()?.to_scalar::<u8>()? == 0,
            None => false,
        };
        if padded {
            candle_core::bail!(
                "candle's quantized_llama has no padding mask: give prompts of equal length"
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
            logits = Some(
                self.model
                    .forward(&ids.narrow(1, i, 1)?.contiguous()?, offset + i)?,
            );
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
