//! Text in and out of a model: tokenizers (HF `tokenizer.json`, or the vocabulary inside a GGUF file),
//! streaming detokenization and chat templates.

pub mod chat;
pub mod gguf_tokenizer;
pub mod tokenizer;
