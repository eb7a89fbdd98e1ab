//! Memory a cell needs, estimated from the model's dimensions and the cell's settings: enough to refuse what
//! no machine holds, and to warn with the number before allocating. An estimate, not an accounting: it
//! counts the frozen weights, the adapter with its gradients and AdamW state, the activations a step keeps
//! and a chunk of vocabulary logits.

use crate::config::{CellSettings, QuantSpec};
use crate::model::{ModelConfig, Target};
use crate::train::step::{CPU_LOSS_CHUNK, GPU_LOSS_CHUNK};

/// Bytes, as f64 (settings can ask for sizes no integer type holds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub bytes: f64,
}

impl Estimate {
    pub fn gib(&self) -> f64 {
        self.bytes / (1u64 << 30) as f64
    }
}

/// Bytes per stored parameter of a frozen projection.
fn frozen_bytes(quant: QuantSpec, gpu: bool) -> f64 {
    match quant {
        // Kept as stored: bf16 on a GPU, f32 on the CPU (an upper bound for a GGUF file's own types).
        QuantSpec::None if gpu => 2.0,
        QuantSpec::None => 4.0,
        QuantSpec::Nf4 | QuantSpec::Q4_0 | QuantSpec::Q4_1 => 0.5625,
        QuantSpec::Q5_0 | QuantSpec::Q5_1 | QuantSpec::Q5k => 0.6875,
        QuantSpec::Q4k => 0.5625,
        QuantSpec::Q6k => 0.8203,
        QuantSpec::Q8_0 => 1.0625,
    }
}

/// (in, out) of a projection.
pub(super) fn projection_dims(m: &ModelConfig, t: Target) -> (f64, f64) {
    let d = m.hidden_size as f64;
    let q = (m.num_heads * m.head_dim) as f64;
    let kv = (m.num_kv_heads * m.head_dim) as f64;
    let ff = m.intermediate_size as f64;
    match t {
        Target::Q => (d, q),
        Target::K | Target::V => (d, kv),
        Target::O => (q, d),
        Target::Gate | Target::Up => (d, ff),
        Target::Down => (ff, d),
    }
}

/// Frozen weights in the device's memory. On a GPU an embedding table that is not also the head waits in
/// host memory (`load::builder`), so only the head counts there.
fn weights(m: &ModelConfig, quant: QuantSpec, gpu: bool) -> f64 {
    let table = (m.vocab_size * m.hidden_size) as f64 * if gpu { 2.0 } else { 4.0 };
    let tables = if m.tie_word_embeddings || gpu {
        1.0
    } else {
        2.0
    };
    m.projection_params() as f64 * frozen_bytes(quant, gpu) + table * tables
}

/// Training one step of the cell: weights, adapter state, activations and a chunk of logits.
pub fn estimate_train(
    m: &ModelConfig,
    s: &CellSettings,
    targets: &[Target],
    quant: QuantSpec,
    gpu: bool,
) -> Estimate {
    let act = if gpu { 2.0 } else { 4.0 };
    let r = s.lora.r.max(0) as f64;
    let layers = m.num_layers as f64;
    let adapter: f64 = targets
        .iter()
        .map(|&t| {
            let (i, o) = projection_dims(m, t);
            r * (i + o)
        })
        .sum::<f64>()
        * layers
        * 16.0;
    let tokens = s.train.batch_size as f64 * s.train.max_seq_len as f64;
    let d = m.hidden_size as f64;
    let q = (m.num_heads * m.head_dim) as f64;
    let kv = (m.num_kv_heads * m.head_dim) as f64;
    let ff = m.intermediate_size as f64;
    // What one block keeps for its backward pass: norms, q/k/v/o, the gated MLP's three products.
    let block = tokens * (4.0 * d + 2.0 * q + 2.0 * kv + 3.0 * ff) * act;
    // Attention never holds the [h, t, t] scores (flash-style on both devices); the CPU's kernel reads an
    // additive [t, t] mask per sequence, the GPU's only the keys' padding flags. The vocabulary loss runs in
    // chunks of rows (`StepOptions::loss_chunk`).
    let mask = if gpu {
        0.0
    } else {
        s.train.batch_size as f64 * (s.train.max_seq_len as f64).powi(2) * 4.0
    };
    let kept = if s.train.gradient_checkpointing {
        layers * tokens * d * act + block + mask
    } else {
        layers * block + mask
    };
    let chunk = match gpu {
        true => GPU_LOSS_CHUNK,
        false => CPU_LOSS_CHUNK,
    } as f64;
    let logits = tokens.min(chunk) * m.vocab_size as f64 * 4.0 * 2.0;
    Estimate {
        bytes: weights(m, quant, gpu) + adapter + kept + logits,
    }
}

/// Answering the question set: weights, the key/value cache of a batch, one step's logits.
pub fn estimate_eval(m: &ModelConfig, s: &CellSettings, quant: QuantSpec, gpu: bool) -> Estimate {
    let act = if gpu { 2.0 } else { 4.0 };
    let batch = s.eval.batch_size as f64;
    let positions = (s.train.max_seq_len + s.eval.max_new_tokens) as f64;
    let kv_cache =
        2.0 * m.num_layers as f64 * (m.num_kv_heads * m.head_dim) as f64 * batch * positions * act;
    let logits = batch * m.vocab_size as f64 * 4.0;
    Estimate {
        bytes: weights(m, quant, gpu) + kv_cache + logits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::load::presets::preset;

    #[test]
    fn an_8b_model_at_the_studys_settings_needs_gigabytes_not_terabytes() {
        let (m, _) = preset("llama-3.1-8b").unwrap();
        let s = CellSettings {
            lora: Default::default(),
            train: Default::default(),
            eval: Default::default(),
        };
        let all: Vec<Target> = Target::ALL.to_vec();
        let train = estimate_train(&m, &s, &all, QuantSpec::Nf4, true).gib();
        assert!((5.0..60.0).contains(&train), "{train}");
        // Measured on the H200 (bench/results/h200-long-context.json): 131,072 tokens at batch 1 train in
        // 66 GiB; the estimate must not refuse what the engine does.
        let mut long = s.clone();
        long.train.max_seq_len = 131_072;
        long.train.batch_size = 1;
        let long = estimate_train(&m, &long, &all, QuantSpec::Nf4, true).gib();
        assert!((40.0..139.0).contains(&long), "{long}");
        let mut huge = s.clone();
        huge.train.max_seq_len = 1 << 20;
        huge.train.batch_size = 64;
        // 67M tokens: terabytes of activations, refused long before any allocation.
        assert!(estimate_train(&m, &huge, &all, QuantSpec::Nf4, true).gib() > 1e4);
        let eval = estimate_eval(&m, &s, QuantSpec::Nf4, true).gib();
        assert!((4.0..40.0).contains(&eval), "{eval}");
    }

    /// An untied embedding table waits in host memory on a GPU (load::builder), so a GPU counts one table
    /// for a tied model and an untied one alike; the CPU holds both of an untied model's tables.
    #[test]
    fn a_gpu_counts_the_head_but_not_an_untied_embedding_table() {
        let (untied, _) = preset("llama-3.1-8b").unwrap();
        assert!(!untied.tie_word_embeddings);
        let tied = ModelConfig {
            tie_word_embeddings: true,
            ..untied.clone()
        };
        let table = (untied.vocab_size * untied.hidden_size) as f64;
        let q = QuantSpec::Nf4;
        assert_eq!(weights(&untied, q, true), weights(&tied, q, true));
        assert_eq!(
            weights(&untied, q, false) - weights(&tied, q, false),
            4.0 * table
        );
    }
}
