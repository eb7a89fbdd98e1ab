//! `qlab bench train` and `qlab bench generate`: time LoRA training steps, or answering with an adapter, at a
//! model's real dimensions and print the figures.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use color_eyre::eyre::Result;
use qlab::eval::bench::{GenerateBenchSettings, bench_generate};
use qlab::model::Quant;
use qlab::model::load::bench_model::BenchModel;
use qlab::train::bench::{BenchSettings, bench_train};
use qlab::train::step::CheckpointPlace;

use super::exit::bad_flag;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time training steps (loss + LoRA gradients + AdamW) on the CPU or a CUDA GPU.
    Train(TrainArgs),
    /// Time greedy answering (prefill + decode) with an unmerged LoRA adapter on the CPU or a CUDA GPU.
    Generate(GenerateArgs),
}

/// The model both benchmarks build.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A preset at real dimensions: smollm2-135m, llama-2-7b, llama-3-8b, llama-3.1-8b, gemma-7b, gemma-2-9b, mistral-7b-v0.3, qwen2-7b.
    #[arg(long, conflicts_with = "model", requires = "random_weights")]
    preset: Option<String>,
    /// Use random weights (with --preset).
    #[arg(long)]
    random_weights: bool,
    /// A checkpoint directory (config.json + safetensors, bnb-4bit) or a .gguf file.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Frozen base storage: none, nf4, q4_0, q4_1, q8_0, q4k ... (default: the preset's; nf4 for checkpoints;
    /// a GGUF's tensors as stored).
    #[arg(long)]
    quant: Option<String>,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    base: ModelArgs,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Training steps; the first is warm-up and is timed only when it is the only one (a memory fit
    /// check at a long sequence).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// CPU threads for the matrix kernels.
    #[arg(long)]
    threads: Option<usize>,
    /// LoRA rank (adapters on all seven projections).
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// Keep every block's activations instead of recomputing them.
    #[arg(long)]
    no_checkpointing: bool,
    /// With checkpointing, recompute the frozen projections instead of keeping their outputs (less memory;
    /// the default on a GPU).
    #[arg(long, conflicts_with = "save_frozen")]
    recompute_frozen: bool,
    /// With checkpointing, keep the frozen projections' outputs for the recomputation (the default on the CPU).
    #[arg(long)]
    save_frozen: bool,
    /// With checkpointing on a GPU, where the blocks' inputs wait for the backward pass: `host` frees the
    /// device's memory for longer sequences; `auto` moves them when they would take over 40% of it.
    #[arg(long, value_enum, default_value_t = Checkpoints::Auto)]
    checkpoints: Checkpoints,
    /// With checkpointing on a GPU, recompute each block's attention half (q/k/v and output projections, flash
    /// attention) in the backward pass instead of keeping it in host memory from the forward.
    #[arg(long)]
    recompute_attention: bool,
    /// Positions per chunk of the vocabulary loss: fewer hold less of the logits at once (default: 512 on a
    /// GPU, 256 on the CPU).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    loss_chunk: Option<u64>,
    /// On the CPU, keep the products through the frozen weights in f32 (default: bf16 with f32 sums where the
    /// CPU multiplies it faster, on AMX tiles or with AVX512_BF16, as `[train] cpu_bf16` does).
    #[arg(long)]
    cpu_f32: bool,
    /// With --preset: keep only the first N blocks (to profile a step at real widths in less time).
    #[arg(long, requires = "preset")]
    layers: Option<usize>,
    /// Where to run: cpu, cuda:N or auto (CUDA needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu", value_parser = super::parse_device)]
    device: qlab::config::DeviceSpec,
    /// On a GPU: report the last step's timeline, host and device time at the start, each block's forward,
    /// the head and loss, each block's backward and the update (where the device waited for the host).
    #[arg(long)]
    timeline: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// `--checkpoints`: where a checkpointed step keeps the blocks' inputs.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Checkpoints {
    Auto,
    Device,
    Host,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    base: ModelArgs,
    /// Rank of the random LoRA adapter attached unmerged to all seven projections (0: the base alone).
    #[arg(long, default_value_t = 16)]
    adapter_rank: usize,
    /// Rows answered at once.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Prompt length in tokens (random ids).
    #[arg(long, default_value_t = 128)]
    prompt: usize,
    /// New tokens per row (exactly this many: no stop ids).
    #[arg(long, default_value_t = 128)]
    new: usize,
    /// Timed runs after one warm-up run; figures are their medians.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// CPU threads for the matrix kernels.
    #[arg(long)]
    threads: Option<usize>,
    /// With --preset: keep only the first N blocks.
    #[arg(long, requires = "preset")]
    layers: Option<usize>,
    /// Where to run: cpu, cuda:N or auto (CUDA needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu", value_parser = super::parse_device)]
    device: qlab::config::DeviceSpec,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Train(a) => train(a),
        BenchCommand::Generate(a) => generate(a),
    }
}

/// Sets the matrix kernels' thread count; call before any candle or rayon work.
fn set_threads(threads: Option<usize>) {
    if let Some(t) = threads {
        // SAFETY: set before any candle or rayon work starts, while the process has a single thread.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", t.to_string()) };
    }
}

fn bench_model(preset: Option<String>, model: Option<PathBuf>) -> Result<BenchModel> {
    match (preset, model) {
        (Some(p), None) => Ok(BenchModel::Preset(p)),
        (None, Some(m)) => Ok(BenchModel::Path(m)),
        _ => Err(bad_flag(
            "--preset/--model",
            "give either --preset NAME --random-weights or --model PATH",
        )),
    }
}

fn parse_quant(quant: Option<&str>) -> Result<Option<Quant>> {
    quant
        .map(|q| {
            Quant::parse(q).ok_or_else(|| {
                bad_flag(
                    "--quant",
                    format!("unknown `{q}`; expected none, nf4, q4_0, q4_1, q8_0, q4k ..."),
                )
            })
        })
        .transpose()
}

fn train(a: TrainArgs) -> Result<()> {
    set_threads(a.threads);
    let report = bench_train(&BenchSettings {
        model: bench_model(a.base.preset, a.base.model)?,
        quant: parse_quant(a.base.quant.as_deref())?,
        batch: a.batch,
        seq: a.seq,
        steps: a.steps,
        rank: a.rank,
        checkpointing: !a.no_checkpointing,
        save_frozen_products: match (a.save_frozen, a.recompute_frozen) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        device: a.device,
        checkpoints: match a.checkpoints {
            Checkpoints::Auto => CheckpointPlace::Auto,
            Checkpoints::Device => CheckpointPlace::Device,
            Checkpoints::Host => CheckpointPlace::Host,
        },
        loss_chunk: a.loss_chunk.map(|c| c as usize),
        cpu_f32: a.cpu_f32,
        layers: a.layers,
        timeline: a.timeline,
        attention_on_host: !a.recompute_attention,
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} ({}), batch {} x {} tokens, r={}, {} threads: {:.1} tokens/s, step {:.3} s (median), peak RSS {:.0} MiB, frozen base {:.3} bytes/param",
            report.model,
            report.quant,
            report.batch,
            report.seq,
            report.rank,
            report.threads,
            report.tokens_per_s,
            report.step_s,
            report.peak_rss_mib,
            report.frozen_projection_bytes_per_param
        );
        if let Some(v) = report.peak_vram_gib {
            println!(
                "{}: peak VRAM {v:.2} GiB above the CUDA context; first (warm-up) step {:.1} s",
                report.device, report.warmup_s
            );
        }
        if !report.timeline.is_empty() {
            println!(
                "last step's timeline (ms from its start; `idle` where the device had caught up with the host):"
            );
        }
        for m in &report.timeline {
            let idle = match m.device_ms - m.host_ms < 0.05 {
                true => "  idle",
                false => "",
            };
            println!(
                "  {:<20} host {:>8.1}  device {:>8.1}{idle}",
                m.label, m.host_ms, m.device_ms
            );
        }
    }
    Ok(())
}

fn generate(a: GenerateArgs) -> Result<()> {
    set_threads(a.threads);
    let report = bench_generate(&GenerateBenchSettings {
        model: bench_model(a.base.preset, a.base.model)?,
        quant: parse_quant(a.base.quant.as_deref())?,
        adapter_rank: a.adapter_rank,
        batch: a.batch,
        prompt: a.prompt,
        new: a.new,
        repeats: a.repeats,
        device: a.device,
        layers: a.layers,
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let adapter = match report.adapter_rank {
        0 => "no adapter".to_string(),
        r => format!("r={r} adapter unmerged"),
    };
    println!(
        "{} ({}), {}, batch {} x prompt {} + {} new, {adapter}, {} threads: {:.1} decode tokens/s, {:.1} tokens/s overall, first token {:.3} s (medians of {}), peak RSS {:.0} MiB",
        report.model,
        report.quant,
        report.device,
        report.batch,
        report.prompt,
        report.new,
        report.threads,
        report.decode_tokens_per_s,
        report.tokens_per_s,
        report.time_to_first_token_s,
        report.repeats,
        report.peak_rss_mib,
    );
    if let Some(v) = report.peak_vram_gib {
        println!(
            "peak VRAM {v:.2} GiB above the CUDA context; warm-up run {:.1} s",
            report.warmup_s
        );
    }
    Ok(())
}
