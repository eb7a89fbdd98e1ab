//! The answering benchmark behind `qlab bench generate`: a model at real dimensions (random weights or a
//! checkpoint) with a random LoRA adapter attached unmerged, as `qlab eval` answers with a stage's adapter,
//! decoding a fixed number of tokens per row greedily, timed after a warm-up run.

use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::config::DeviceSpec;
use crate::model::decoder::Decoder;
use crate::model::device::peak_rss_mib;
use crate::model::error::{ModelError, Result};
use crate::model::generate::{
    DecoderLm, GenerateError, GenerateOptions, GenerateStats, Sampling, generate,
};
use crate::model::load::bench_model::{BenchModel, projection_kinds};
use crate::model::quant::weights::Quant;
use crate::model::{LoraSpec, Target};

#[derive(Debug, Clone)]
pub struct GenerateBenchSettings {
    pub model: BenchModel,
    /// Overrides the frozen storage (see [`BenchModel::build`]).
    pub quant: Option<Quant>,
    /// Rank of the random adapter on all seven projections; 0 answers with the base alone.
    pub adapter_rank: usize,
    pub batch: usize,
    /// Prompt length in tokens (random ids; every row as long, so nothing is padded).
    pub prompt: usize,
    /// New tokens per row (no stop ids: exactly this many).
    pub new: usize,
    /// Timed runs after the warm-up run.
    pub repeats: usize,
    /// Where to run (`auto` as `model::device::resolve` says).
    pub device: DeviceSpec,
    /// Presets only: keep the first N blocks.
    pub layers: Option<usize>,
}

/// One timed run.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateRun {
    /// The prompt's forward pass, up to the first token's logits (time to first token).
    pub prefill_s: f64,
    /// Every token after that, one forward pass per token for the whole batch.
    pub decode_s: f64,
    pub new_tokens: usize,
}

impl GenerateRun {
    /// New tokens after each row's first, per second of decoding.
    fn decode_tokens_per_s(&self, batch: usize) -> f64 {
        self.new_tokens.saturating_sub(batch) as f64 / self.decode_s.max(1e-9)
    }

    /// All new tokens per second of prefill + decode.
    fn tokens_per_s(&self) -> f64 {
        self.new_tokens as f64 / (self.prefill_s + self.decode_s).max(1e-9)
    }
}

impl From<GenerateStats> for GenerateRun {
    fn from(s: GenerateStats) -> Self {
        GenerateRun {
            prefill_s: s.prefill_s,
            decode_s: s.decode_s,
            new_tokens: s.new_tokens,
        }
    }
}

/// What one benchmark measured; rates and times are medians of the timed runs.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateBenchReport {
    pub model: String,
    /// Storage of the frozen projections, the most common first.
    pub quant: String,
    pub device: String,
    pub threads: usize,
    pub batch: usize,
    pub prompt: usize,
    pub new: usize,
    /// 0: no adapter.
    pub adapter_rank: usize,
    pub layers: usize,
    /// What a run includes.
    pub measures: &'static str,
    /// New tokens of one run (batch x new).
    pub new_tokens: usize,
    /// New tokens after each row's first / decode time.
    pub decode_tokens_per_s: f64,
    /// New tokens / (prefill + decode).
    pub tokens_per_s: f64,
    /// The prompt's forward pass (prefill).
    pub time_to_first_token_s: f64,
    pub repeats: usize,
    pub runs: Vec<GenerateRun>,
    /// The warm-up run (same settings), excluded from the figures above.
    pub warmup_s: f64,
    pub load_s: f64,
    pub peak_rss_mib: f64,
    /// CUDA only: as `qlab bench train` reports it (peak device memory above the level before the model was
    /// built, allocator cache included).
    pub peak_vram_gib: Option<f64>,
    /// CUDA only: the most memory live tensors held at once during the runs.
    pub peak_allocated_gib: Option<f64>,
}

/// Runs the benchmark on the CPU or a CUDA device.
pub fn bench_generate(s: &GenerateBenchSettings) -> Result<GenerateBenchReport> {
    if s.batch == 0 || s.prompt == 0 || s.new < 2 || s.repeats == 0 {
        return Err(ModelError::Usage(
            "need --batch >= 1, --prompt >= 1, --new >= 2 (decode speed counts the tokens after the first) and --repeats >= 1".into(),
        ));
    }
    let device = Device::try_from(s.device)?;
    #[cfg(feature = "cuda")]
    let vram = crate::model::device::VramPeak::start(&device)?;
    let t0 = Instant::now();
    let mut decoder = s.model.build(s.quant, s.layers, &device)?;
    if s.adapter_rank > 0 {
        attach_random_adapter(&mut decoder, s.adapter_rank)?;
    }
    let load_s = t0.elapsed().as_secs_f64();
    #[cfg(feature = "cuda")]
    crate::model::device::reset_allocated_peak(&device)?;
    let quant = projection_kinds(&decoder);
    let layers = decoder.blocks.len();
    let prompts = random_prompts(decoder.config.vocab_size, s.batch, s.prompt);
    let mut lm = DecoderLm::new(decoder);
    let opts = GenerateOptions {
        max_new_tokens: s.new,
        sampling: Sampling::Greedy,
        stop_ids: vec![],
        pad_id: 0,
    };
    let mut run = || -> Result<GenerateRun> {
        let (_, stats) = generate(&mut lm, &prompts, &opts, &mut |_| {}).map_err(|e| match e {
            GenerateError::Candle(c) => ModelError::Candle(c),
            other => ModelError::Usage(other.to_string()),
        })?;
        Ok(stats.into())
    };
    let warmup = run()?;
    let runs = (0..s.repeats)
        .map(|_| run())
        .collect::<Result<Vec<GenerateRun>>>()?;
    #[cfg(feature = "cuda")]
    let peak_vram_gib = vram.map(|v| v.finish() as f64 / (1u64 << 30) as f64);
    #[cfg(feature = "cuda")]
    let peak_allocated_gib =
        crate::model::device::allocated_peak(&device)?.map(|b| b as f64 / (1u64 << 30) as f64);
    #[cfg(not(feature = "cuda"))]
    let (peak_vram_gib, peak_allocated_gib) = (None, None);
    Ok(GenerateBenchReport {
        model: s.model.name(),
        quant,
        device: crate::model::device::resolve(s.device).to_string(),
        threads: candle_core::utils::get_num_threads(),
        batch: s.batch,
        prompt: s.prompt,
        new: s.new,
        adapter_rank: s.adapter_rank,
        layers,
        measures: "greedy decoding of a batch of equal-length random prompts, KV cache, LoRA unmerged (as qlab eval answers)",
        new_tokens: runs[0].new_tokens,
        decode_tokens_per_s: median(runs.iter().map(|r| r.decode_tokens_per_s(s.batch))),
        tokens_per_s: median(runs.iter().map(GenerateRun::tokens_per_s)),
        time_to_first_token_s: median(runs.iter().map(|r| r.prefill_s)),
        repeats: s.repeats,
        runs,
        warmup_s: warmup.prefill_s + warmup.decode_s,
        load_s,
        peak_rss_mib: peak_rss_mib(),
        peak_vram_gib,
        peak_allocated_gib,
    })
}

/// A random rank-`rank` adapter on all seven projections, attached unmerged as `Decoder::load_peft` attaches
/// a trained one (f32 A and B beside the frozen base). A as PEFT initialises it; B drawn from
/// U(-1/sqrt(r), 1/sqrt(r)) as PEFT's `init_lora_weights=False` leaves it, so the adapter changes the output.
fn attach_random_adapter(decoder: &mut Decoder, rank: usize) -> Result<()> {
    decoder.add_lora(&LoraSpec {
        targets: Target::ALL.to_vec(),
        rank,
        alpha: 16.0,
        rslora: false,
        dropout: 0.0,
        seed: 0,
    })?;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let bound = 1.0 / (rank as f32).sqrt();
    for (key, b) in decoder.lora_params() {
        if key.contains("lora_B") {
            let values: Vec<f32> = (0..b.elem_count())
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            b.set(&Tensor::from_vec(values, b.shape(), b.device())?)?;
        }
    }
    Ok(())
}

/// `batch` rows of `len` random token ids below `vocab`, seeded.
fn random_prompts(vocab: usize, batch: usize, len: usize) -> Vec<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    (0..batch)
        .map(|_| {
            (0..len)
                .map(|_| rng.random_range(0..vocab as u32))
                .collect()
        })
        .collect()
}

/// The median (the mean of the middle two for an even count).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), 2.5);
        assert!(median(std::iter::empty()).is_nan());
    }

    #[test]
    fn the_random_adapter_has_a_nonzero_b_on_every_projection_and_changes_the_logits() {
        let settings = GenerateBenchSettings {
            model: BenchModel::Preset("smollm2-135m".into()),
            quant: None,
            adapter_rank: 0,
            batch: 1,
            prompt: 3,
            new: 2,
            repeats: 1,
            device: DeviceSpec::Cpu,
            layers: Some(1),
        };
        let base = settings.model.build(None, Some(1), &Device::Cpu).unwrap();
        let mut adapted = base.clone();
        attach_random_adapter(&mut adapted, 4).unwrap();
        let params = adapted.lora_params();
        assert_eq!(params.len(), 2 * 7, "A and B on all seven projections");
        for (key, b) in params.iter().filter(|(k, _)| k.contains("lora_B")) {
            let max = b
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(max > 0.0 && max <= 0.5, "{key}: |B| max {max}");
        }
        let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
        let logits = |d: Decoder| {
            let mut lm = DecoderLm::new(d);
            crate::model::generate::CausalLm::forward(&mut lm, &ids, 0, None)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_ne!(logits(base), logits(adapted));
        let report = bench_generate(&GenerateBenchSettings {
            adapter_rank: 4,
            ..settings
        })
        .unwrap();
        assert_eq!((report.new_tokens, report.runs.len()), (2, 1));
    }
}
