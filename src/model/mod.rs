//! The model engine: decoders for the study's families with frozen quantized weights, LoRA, tokenizers, generation.
//!
//! Groups, imports pointing down only (checked by tests/architecture.rs):
//! generate -> load -> decoder -> kernels -> quant -> {autograd, device}; config, target, error at the bottom;
//! text (tokenizers, chat templates) stands alone.

pub mod autograd;
pub mod config;
pub mod decoder;
pub mod device;
pub mod error;
pub mod generate;
pub mod kernels;
pub mod load;
pub mod quant;
pub mod target;
#[cfg(test)]
pub(crate) mod test_support;
pub mod text;

pub use config::{Family, ModelConfig};
pub use decoder::lora::LoraSpec;
pub use decoder::{Decoder, KvCache, Positions};
pub use error::ModelError;
pub use load::load_model;
pub use quant::{FrozenLinear, FrozenWeight, Quant};
pub use target::Target;
