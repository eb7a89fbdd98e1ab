//! The model engine: decoders for the study's families with frozen quantized weights, LoRA, tokenizers, generation.

pub mod chat;
pub mod generate;
pub mod gguf_tokenizer;
pub mod source;
pub mod tokenizer;
