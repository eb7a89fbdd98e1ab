//! The training-step benchmark behind `qlab bench train`: a model at real dimensions (random weights or a
//! checkpoint), LoRA on chosen targets, timed steps of loss + LoRA gradients + an AdamW update.

use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::config::DeviceSpec;
use crate::model::device::{peak_rss_mib, timeline};
use crate::model::error::{ModelError, Result};
use crate::model::kernels::cpu::bf16::Precision;
use crate::model::load::bench_model::{BenchModel, projection_kinds};
use crate::model::quant::weights::Quant;
use crate::model::{LoraSpec, Target};
use crate::train::TrainError;
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::step::{CheckpointPlace, StepOptions, TrainBatch};

#[derive(Debug, Clone)]
pub struct BenchSettings {
    pub model: BenchModel,
    /// Overrides the preset's quantization (presets: Q4_1 for smollm2-135m, NF4 otherwise; paths: NF4).
    pub quant: Option<Quant>,
    pub batch: usize,
    pub seq: usize,
    pub steps: usize,
    pub rank: usize,
    pub checkpointing: bool,
    /// See `StepOptions::save_frozen_products` (None: the device's default, `StepOptions::for_device`).
    pub save_frozen_products: Option<bool>,
    /// Where checkpointed steps keep the blocks' inputs.
    pub checkpoints: CheckpointPlace,
    /// Positions per chunk of the vocabulary loss (None: the device's default, `StepOptions::for_device`).
    pub loss_chunk: Option<usize>,
    /// On the CPU: keep the frozen products in f32 even where the CPU multiplies bf16 natively.
    pub cpu_f32: bool,
    /// Where to run (`auto` as `model::device::resolve` says).
    pub device: DeviceSpec,
    /// Presets only: keep the first N blocks (profiling a step at real widths in less time and memory).
    pub layers: Option<usize>,
    /// CUDA only: record the last step's timeline of host and device (`model::device::timeline`).
    pub timeline: bool,
    /// See `StepOptions::attention_on_host` (GPU, with checkpointing).
    pub attention_on_host: bool,
}

/// What one benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub quant: String,
    pub batch: usize,
    pub seq: usize,
    pub rank: usize,
    pub threads: usize,
    pub checkpointing: bool,
    pub save_frozen_products: bool,
    /// Checkpointed steps kept the blocks' inputs in host memory (`--checkpoints`, `auto` resolved).
    pub checkpoints_on_host: bool,
    /// With checkpointing: the last blocks kept whole instead (`train::keep_blocks`, CPU).
    pub kept_blocks: usize,
    /// With checkpointing on a GPU: the blocks whose attention half waited in host memory in the last step
    /// (`--recompute-attention` turns it off), their recomputation starting at the feed-forward.
    pub attention_halves_on_host: usize,
    /// Positions per chunk of the vocabulary loss.
    pub loss_chunk: usize,
    /// On the CPU: the dtype of the products through the frozen weights and its kernel ("f32",
    /// "bf16 (AMX)", "bf16 (AVX512_BF16)"). Absent on a GPU, whose are bf16.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_products: Option<&'static str>,
    /// What a step includes.
    pub measures: &'static str,
    /// Median step time, the first (warm-up) step excluded.
    pub step_s: f64,
    pub step_times_s: Vec<f64>,
    pub tokens_per_s: f64,
    pub peak_rss_mib: f64,
    pub device: String,
    /// CUDA only: peak device memory during the timed steps above the level before the model was built
    /// (so the CUDA context is excluded; memory the allocator keeps cached is included).
    pub peak_vram_gib: Option<f64>,
    /// CUDA only: the most memory live tensors held at once during the timed steps (the memory pool's
    /// high watermark: no allocator cache, no context; PyTorch's `max_memory_allocated`).
    pub peak_allocated_gib: Option<f64>,
    /// The first step (module loading, kernel JIT, allocator warm-up), excluded from `step_s`.
    pub warmup_s: f64,
    pub load_s: f64,
    pub frozen_projection_mib: f64,
    pub frozen_projection_bytes_per_param: f64,
    pub lora_params: usize,
    /// Blocks of the model (fewer than the preset's with `layers`).
    pub layers: usize,
    pub first_loss: f32,
    pub last_loss: f32,
    /// With `timeline`: the last step's marks (start, embedding, every block forward, head and loss, every
    /// block backward, gradients, update), host and device milliseconds from the start.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<timeline::Mark>,
}

/// The optimizer's error as the benchmark's.
fn step_error(e: TrainError) -> ModelError {
    match e {
        TrainError::Candle(e) => ModelError::Candle(e),
        other => ModelError::Usage(other.to_string()),
    }
}

/// Runs the benchmark on the CPU or a CUDA device.
pub fn bench_train(s: &BenchSettings) -> Result<BenchReport> {
    let device = Device::try_from(s.device)?;
    if s.steps == 0 || s.batch == 0 || s.seq < 2 {
        return Err(ModelError::Usage(
            "need --steps >= 1 (the first is warm-up, timed alone only when it is the only one), --batch >= 1, --seq >= 2".into(),
        ));
    }
    #[cfg(feature = "cuda")]
    let vram = crate::model::device::VramPeak::start(&device)?;
    let t0 = Instant::now();
    let mut model = s.model.build(s.quant, s.layers, &device)?;
    let load_s = t0.elapsed().as_secs_f64();
    #[cfg(feature = "cuda")]
    crate::model::device::reset_allocated_peak(&device)?;
    let spec = LoraSpec {
        targets: Target::ALL.to_vec(),
        rank: s.rank,
        alpha: 16.0,
        rslora: false,
        dropout: 0.0,
        seed: 0,
    };
    model.add_lora(&spec)?;
    let params = model.lora_params();
    let lora_params = params.iter().map(|(_, v)| v.elem_count()).sum();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let vocab = model.config.vocab_size as u32;
    let ids: Vec<u32> = (0..s.batch * s.seq)
        .map(|_| rng.random_range(0..vocab))
        .collect();
    let batch = TrainBatch {
        input_ids: Tensor::from_vec(ids, (s.batch, s.seq), &device)?,
        loss_mask: Tensor::ones((s.batch, s.seq), candle_core::DType::F32, &device)?,
        attention_mask: None,
    };
    let defaults = StepOptions::for_device(&device);
    let opts = StepOptions {
        checkpointing: s.checkpointing,
        save_frozen_products: s
            .save_frozen_products
            .unwrap_or(defaults.save_frozen_products),
        checkpoints: s.checkpoints,
        loss_chunk: s.loss_chunk.unwrap_or(defaults.loss_chunk),
        precision: Precision::on(&device, !s.cpu_f32),
        attention_on_host: s.attention_on_host,
        ..defaults
    };
    // The trainer's optimizer as it runs by default: lr 2e-4, betas 0.9/0.999, clipping to norm 1.
    let mut adam = AdamW::new(&params, AdamWConfig::with_weight_decay(0.0)).map_err(step_error)?;
    let mut times = Vec::new();
    let mut losses = Vec::new();
    let _recording = timeline::record(s.timeline);
    let mut marks = Vec::new();
    let mut halves_on_host = 0;
    for _ in 0..s.steps {
        let t = Instant::now();
        let out = model.loss_and_grads(&batch, &opts)?;
        halves_on_host = out.halves_on_host;
        let grads = out.grads.into_iter().map(|(_, g)| g).collect();
        adam.step_summed(&params, grads, 1, Some(1.0), 2e-4)
            .map_err(step_error)?;
        timeline::mark(&device, || "updated".into());
        device.synchronize()?;
        marks = timeline::take();
        times.push(t.elapsed().as_secs_f64());
        losses.push(out.loss);
    }
    // One step (a fit check at a long sequence) is timed warm-up included.
    let mut warm: Vec<f64> = times[times.len().min(2) - 1..].to_vec();
    warm.sort_by(f64::total_cmp);
    let step_s = warm[warm.len() / 2];
    let warmup_s = times[0];
    #[cfg(feature = "cuda")]
    let peak_vram_gib = vram.map(|v| v.finish() as f64 / (1u64 << 30) as f64);
    #[cfg(feature = "cuda")]
    let peak_allocated_gib =
        crate::model::device::allocated_peak(&device)?.map(|b| b as f64 / (1u64 << 30) as f64);
    #[cfg(not(feature = "cuda"))]
    let peak_allocated_gib = None;
    #[cfg(not(feature = "cuda"))]
    let peak_vram_gib = None;
    let (bytes, nparams) = model.projection_storage();
    Ok(BenchReport {
        model: s.model.name(),
        quant: projection_kinds(&model),
        batch: s.batch,
        seq: s.seq,
        rank: s.rank,
        threads: candle_core::utils::get_num_threads(),
        checkpointing: s.checkpointing,
        save_frozen_products: opts.save_frozen_products,
        checkpoints_on_host: s.checkpointing
            && opts.checkpoints.on_host(
                s.batch
                    * s.seq
                    * model.config.hidden_size
                    * crate::model::device::compute_dtype(&device).size_in_bytes(),
                model.blocks.len(),
                &device,
            ),
        kept_blocks: match s.checkpointing {
            true => model.kept_blocks(s.batch * s.seq, opts.keep, opts.save_frozen_products),
            false => 0,
        },
        attention_halves_on_host: halves_on_host,
        loss_chunk: opts.loss_chunk,
        cpu_products: device.is_cpu().then(|| opts.precision.label()),
        measures: "forward + loss + backward to all LoRA tensors (activation checkpointing per block, chunked vocabulary loss) + the trainer's update (global-norm clipping to 1, AdamW)",
        step_s,
        step_times_s: times,
        tokens_per_s: (s.batch * s.seq) as f64 / step_s,
        peak_rss_mib: peak_rss_mib(),
        device: crate::model::device::resolve(s.device).to_string(),
        peak_vram_gib,
        peak_allocated_gib,
        warmup_s,
        load_s,
        frozen_projection_mib: bytes as f64 / (1024.0 * 1024.0),
        frozen_projection_bytes_per_param: bytes as f64 / nparams.max(1) as f64,
        lora_params,
        layers: model.blocks.len(),
        first_loss: losses.first().copied().unwrap_or(f32::NAN),
        last_loss: losses.last().copied().unwrap_or(f32::NAN),
        timeline: marks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::step::LossAndGrads;

    #[test]
    fn layers_keeps_the_first_blocks_of_a_preset() {
        let report = bench_train(&BenchSettings {
            model: BenchModel::Preset("smollm2-135m".into()),
            quant: None,
            batch: 1,
            seq: 4,
            steps: 2,
            rank: 2,
            checkpointing: true,
            save_frozen_products: None,
            checkpoints: CheckpointPlace::Auto,
            loss_chunk: None,
            cpu_f32: true,
            device: DeviceSpec::Cpu,
            layers: Some(1),
            timeline: true,
            attention_on_host: true,
        })
        .unwrap();
        assert_eq!(report.layers, 1);
        // The timeline is the GPU's: on the CPU it stays empty.
        assert!(report.timeline.is_empty());
        assert_eq!(report.cpu_products, Some("f32"));
        // Saved frozen products (the CPU default) hold more than the block kept whole.
        assert_eq!(report.kept_blocks, 1);
        // r * (in + out) for q, o, k, v, gate, up, down of one block at SmolLM2's widths, rank 2.
        let (d, kv, ff) = (576, 192, 1536);
        let lora = 2 * (2 * (d + d) + 2 * (d + kv) + 3 * (d + ff));
        assert_eq!(report.lora_params, lora);
    }

    /// The loss in chunks (the quantized head dequantized, or packed for bf16, once for all of them)
    /// against one chunk, in each precision this CPU runs.
    #[test]
    fn a_quantized_head_gives_the_same_loss_and_gradients_in_chunks() {
        let model = BenchModel::Preset("smollm2-135m".into());
        let mut model = model.build(None, Some(1), &Device::Cpu).unwrap();
        assert_eq!(model.head.weight.kind(), "q8_0");
        let spec = LoraSpec {
            targets: Target::ALL.to_vec(),
            rank: 2,
            alpha: 16.0,
            rslora: false,
            dropout: 0.0,
            seed: 0,
        };
        model.add_lora(&spec).unwrap();
        let ids: Vec<u32> = (0..9).map(|i| i * 4099 % 49152).collect();
        let batch = TrainBatch {
            input_ids: Tensor::from_vec(ids, (1, 9), &Device::Cpu).unwrap(),
            loss_mask: Tensor::ones((1, 9), candle_core::DType::F32, &Device::Cpu).unwrap(),
            attention_mask: None,
        };
        for precision in [Precision::F32, Precision::resolve(true)] {
            let run = |loss_chunk| {
                let opts = StepOptions {
                    loss_chunk,
                    precision,
                    ..StepOptions::default()
                };
                model.loss_and_grads(&batch, &opts).unwrap()
            };
            same_loss_and_grads(&run(64), &run(3));
        }
    }

    fn same_loss_and_grads(one: &LossAndGrads, chunks: &LossAndGrads) {
        assert!((one.loss - chunks.loss).abs() <= 1e-6 * one.loss);
        for ((key, a), (_, b)) in one.grads.iter().zip(&chunks.grads) {
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            let scale = a.abs().unwrap().max_all().unwrap();
            let (diff, scale) = (
                diff.to_scalar::<f32>().unwrap(),
                scale.to_scalar::<f32>().unwrap(),
            );
            assert!(diff <= 1e-5 * scale, "{key}: {diff} of {scale}");
        }
    }

    #[test]
    fn one_step_is_timed_warm_up_included_and_none_is_refused() {
        let settings = |steps| BenchSettings {
            model: BenchModel::Preset("smollm2-135m".into()),
            quant: None,
            batch: 1,
            seq: 4,
            steps,
            rank: 2,
            checkpointing: true,
            save_frozen_products: None,
            checkpoints: CheckpointPlace::Auto,
            loss_chunk: None,
            cpu_f32: false,
            device: DeviceSpec::Cpu,
            layers: Some(1),
            timeline: false,
            attention_on_host: true,
        };
        let report = bench_train(&settings(1)).unwrap();
        assert_eq!(report.step_times_s.len(), 1);
        assert_eq!(report.cpu_products, Some(Precision::resolve(true).label()));
        assert_eq!(report.step_s, report.warmup_s);
        let err = bench_train(&settings(0)).unwrap_err().to_string();
        assert!(err.contains("--steps >= 1"), "{err}");
    }
}
