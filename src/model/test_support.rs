//! Helpers shared by the model engine's unit tests.

use candle_core::{Device, Tensor};

use crate::model::config::ModelConfig;
use crate::model::decoder::Decoder;
use crate::model::decoder::lora::LoraSpec;
use crate::model::load::builder::build_decoder;
use crate::model::load::presets::RandomWeights;
use crate::model::quant::weights::Quant;
use crate::model::target::Target;

/// The demo model's GGUF (fetched on first use, as a user's first run fetches it), or None where it cannot be
/// had (no network and no cached copy): the tests that need it then say so and pass over it.
pub fn demo_model_path() -> Option<std::path::PathBuf> {
    let opts = crate::source::ResolveOptions::from_env().ok()?;
    crate::source::demo_model().resolve(&opts).ok()
}

/// Largest absolute element-wise difference of two tensors of one shape (f32).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// A decoder of `cfg` on the CPU with random weights (NF4 projections, an f32 embedding table) and adapters
/// of `(rank, alpha, dropout)` on all seven projections, both drawn from `seed`.
pub fn nf4_decoder_with_lora(
    cfg: ModelConfig,
    seed: u64,
    (rank, alpha, dropout): (usize, f64, f64),
) -> Decoder {
    let src = RandomWeights {
        config: cfg.clone(),
        seed,
        embed_q8_0: false,
    };
    let mut dec = build_decoder(cfg, &src, Quant::Nf4, &Device::Cpu).unwrap();
    let spec = LoraSpec {
        targets: Target::ALL.to_vec(),
        rank,
        alpha,
        rslora: false,
        dropout,
        seed,
    };
    dec.add_lora(&spec).unwrap();
    dec
}
