//! The model engine: decoders for the study's families with frozen quantized weights, LoRA, tokenizers, generation.
