//! Open a resolved model path as qlab's decoder, ready to generate: frozen base in the asked-for
//! quantization, a PEFT adapter applied unmerged (or merged, the fast path), on the asked-for device.

use std::path::Path;

use candle_core::Device;

use super::DecoderLm;
use crate::model::{ModelError, Quant, load_model};

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("adapter {dir}: {source}")]
    Adapter {
        dir: std::path::PathBuf,
        #[source]
        source: ModelError,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Load the model at `path` (a .gguf file or a safetensors directory) on `device` and apply `adapter` when
/// given.
pub fn open_model(
    path: &Path,
    quant: Quant,
    adapter: Option<&Path>,
    device: &Device,
) -> Result<DecoderLm, OpenError> {
    let mut decoder = load_model(path, quant, device)?;
    if let Some(dir) = adapter {
        decoder
            .load_peft(dir)
            .map_err(|source| OpenError::Adapter {
                dir: dir.to_owned(),
                source,
            })?;
    }
    Ok(DecoderLm::new(decoder))
}
