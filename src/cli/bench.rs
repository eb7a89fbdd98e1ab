//! `qlab bench train`: times LoRA training steps at a model's real dimensions and prints the figures.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use color_eyre::eyre::{Result, bail, eyre};
use qlab::model::Quant;
use qlab::train::bench::{BenchModel, BenchSettings, bench_train};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time training steps (loss + LoRA gradients + AdamW) on the CPU or a CUDA GPU.
    Train(TrainArgs),
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A preset at real dimensions: smollm2-135m, llama-2-7b, llama-3-8b, llama-3.1-8b, gemma-7b, gemma-2-9b, mistral-7b-v0.3, qwen2-7b.
    #[arg(long, conflicts_with = "model", requires = "random_weights")]
    preset: Option<String>,
    /// Use random weights (with --preset).
    #[arg(long)]
    random_weights: bool,
    /// A checkpoint directory (config.json + safetensors, bnb-4bit) or a .gguf file.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Frozen base storage: none, nf4, q4_0, q4_1, q8_0, q4k ... (default: the preset's, nf4 for checkpoints).
    #[arg(long)]
    quant: Option<String>,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 256)]
    seq: usize,
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
    /// With --preset: keep only the first N blocks (to profile a step at real widths in less time).
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
    let BenchCommand::Train(a) = cmd;
    if let Some(t) = a.threads {
        // SAFETY: set before any candle or rayon work starts, while the process has a single thread.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", t.to_string()) };
    }
    let model = match (a.preset, a.model) {
        (Some(p), None) => BenchModel::Preset(p),
        (None, Some(m)) => BenchModel::Path(m),
        _ => bail!("give either --preset NAME --random-weights or --model PATH"),
    };
    let quant = match a.quant.as_deref() {
        Some(q) => Some(Quant::parse(q).ok_or_else(|| {
            eyre!("unknown --quant `{q}`; expected none, nf4, q4_0, q4_1, q8_0, q4k ...")
        })?),
        None => None,
    };
    let report = bench_train(&BenchSettings {
        model,
        quant,
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
        layers: a.layers,
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
    }
    Ok(())
}
