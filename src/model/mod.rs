//! The model engine: decoders for the study's families with frozen quantized weights, LoRA, tokenizers, generation.

pub mod adamw;
pub mod attach;
pub mod bench;
pub mod builder;
pub mod chat;
pub mod config;
pub mod cpu_ops;
pub mod cuda;
pub mod decoder;
pub mod error;
pub mod frozen;
pub mod generate;
pub mod gguf_tokenizer;
pub mod grad_carrier;
pub mod layers;
pub mod load;
pub mod load_gguf;
pub mod load_safetensors;
pub mod lora;
pub mod nf4;
pub mod peft;
pub mod presets;
pub mod source;
#[cfg(test)]
mod test_support;
pub mod tokenizer;
pub mod train_step;
pub mod weights;

pub use config::{Family, ModelConfig};
pub use decoder::{Decoder, KvCache, Positions};
pub use error::ModelError;
pub use frozen::{FrozenLinear, FrozenWeight};
pub use load::load_model;
pub use lora::{LoraSpec, Target};
pub use train_step::{LossAndGrads, StepOptions, TrainBatch};
pub use weights::Quant;
