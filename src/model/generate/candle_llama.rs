//! candle-transformers' own `quantized_llama` behind [`CausalLm`]: the reference that qlab's decode speed is
//! measured against on the same GGUF file. It has no padding mask, so a padded batch is refused.

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
        self.model.forward(ids, offset)
    }

    fn clear_cache(&mut self) {
        self.model.clear_kv_cache();
    }

    fn device(&self) -> &Device {
        &self.device
    }
}
