//! Open a resolved model path as a [`CausalLm`] ready to generate.

use std::path::Path;

use candle_core::Device;

use super::{CandleQuantizedLlama, CausalLm};

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: {reason}")]
    Unsupported {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("{path}: cannot load model: {source}")]
    Load {
        path: std::path::PathBuf,
        #[source]
        source: candle_core::Error,
    },
}

/// Load the model at `path` (a GGUF file) on the CPU.
pub fn open_model(
    path: &Path,
    quant: &str,
    adapter: Option<&Path>,
) -> Result<Box<dyn CausalLm>, OpenError> {
    let unsupported = |reason: &str| OpenError::Unsupported {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if adapter.is_some() {
        return Err(unsupported(
            "LoRA adapters need qlab's own decoder, which this build does not include yet",
        ));
    }
    if quant != "none" {
        return Err(unsupported(
            "GGUF weights are used as stored: pass --quant none",
        ));
    }
    if !path
        .extension()
        .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
    {
        return Err(unsupported("expected a .gguf file"));
    }
    let model =
        CandleQuantizedLlama::load(path, &Device::Cpu).map_err(|source| OpenError::Load {
            path: path.to_owned(),
            source,
        })?;
    Ok(Box::new(model))
}
