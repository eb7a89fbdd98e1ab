//! Decode speed, qlab's generation path against candle-transformers' quantized models on the same GGUF
//! files, batch 1 and batch 10, greedy, in one run, on two models:
//! - the demo model (SmolLM2-135M-Instruct Q4_1) against `quantized_llama`, prompted with a short text;
//! - a random-weight GGUF at Qwen2-0.5B's dimensions in llama.cpp's Q4_K_M mix against `quantized_qwen2`,
//!   prompted with 16 fixed token ids. The file named by `QLAB_BENCH_QWEN2_GGUF`, or else written afresh by
//!   `python3 scripts/make_qwen2_q4km.py` into cargo's target tmp dir (skipped, saying why, when python3 or
//!   its `gguf` package is missing).
//!
//! `cargo bench --bench decode` (threads: RAYON_NUM_THREADS; tokens: QLAB_BENCH_TOKENS, default 64;
//! `QLAB_BENCH_QUICK=1`: qlab alone on the demo model, for comparing changes; each figure the median of 3
//! runs, with the binary's allocator settings). Each measurement, each
//! qlab/candle ratio and each engine's batch-10/batch-1 ratio is also printed as one JSON line (the lines
//! starting with `{`): `cargo bench --bench decode | grep '^{' > bench/results/NAME.jsonl`.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use mimalloc::MiMalloc;
use qlab::model::Quant;
use qlab::model::generate::{
    CandleQuantizedLlama, CandleQuantizedQwen2, CausalLm, GenerateOptions, Sampling, generate,
    open_model,
};
use qlab::model::text::tokenizer::Tokenizer;
use qlab::source::{ResolveOptions, demo_model};
use serde_json::json;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

const PROMPT: &str = "Write a short story about a robot who learns to paint.";
const BATCHES: [usize; 2] = [1, 10];

fn rss_mib() -> f64 {
    memory_stats::memory_stats().map_or(0.0, |m| m.physical_mem as f64 / (1024.0 * 1024.0))
}

/// What every JSON line carries: the machine and the run's settings.
struct Context {
    cpu: String,
    avx512: bool,
    threads: usize,
    tokens: usize,
    /// qlab alone on the demo model.
    quick: bool,
}

impl Context {
    fn new(tokens: usize, quick: bool) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_default();
        #[cfg(target_arch = "x86_64")]
        let avx512 = std::arch::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let avx512 = false;
        Context {
            cpu,
            avx512,
            threads: candle_core::utils::get_num_threads(),
            tokens,
            quick,
        }
    }

    fn line(&self, mut fields: serde_json::Value) {
        fields["bench"] = json!("decode");
        fields["cpu"] = json!(self.cpu);
        fields["avx512"] = json!(self.avx512);
        fields["threads"] = json!(self.threads);
        fields["new_tokens_per_row"] = json!(self.tokens);
        println!("{fields}");
    }
}

/// One model file and the prompt both engines are given.
struct Case<'a> {
    name: &'a str,
    path: &'a Path,
    prompt: &'a [u32],
    peer_name: &'a str,
    load_peer: fn(&Path, &Device) -> candle_core::Result<Box<dyn CausalLm>>,
}

/// Decode tokens per second (prefill excluded) and prefill seconds, the medians of [`REPEATS`] runs after
/// a short warm-up run.
fn measure(model: &mut dyn CausalLm, prompt: &[u32], batch: usize, tokens: usize) -> (f64, f64) {
    let prompts = vec![prompt.to_vec(); batch];
    let opts = GenerateOptions {
        max_new_tokens: tokens,
        sampling: Sampling::Greedy,
        stop_ids: vec![],
        pad_id: 0,
    };
    let warm = GenerateOptions {
        max_new_tokens: 4,
        ..opts.clone()
    };
    generate(model, &prompts, &warm, &mut |_| {}).expect("warm-up");
    let (mut tps, mut prefill): (Vec<f64>, Vec<f64>) = (0..REPEATS)
        .map(|_| {
            let (_, stats) = generate(model, &prompts, &opts, &mut |_| {}).expect("generate");
            let decoded = (stats.new_tokens - batch) as f64;
            (decoded / stats.decode_s, stats.prefill_s)
        })
        .unzip();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (median(&mut tps), median(&mut prefill))
}

/// Measured runs per engine and batch (their medians are reported): single runs of one tree on a shared
/// 2-core machine ranged from 453 to 797 tokens/s (the demo model at batch 10).
const REPEATS: usize = 3;

/// Batch 1 and 10 on one engine: decode tokens/s per batch.
fn bench(ctx: &Context, case: &Case, engine: &str, model: &mut dyn CausalLm) -> Vec<f64> {
    let tps: Vec<f64> = BATCHES
        .iter()
        .map(|&batch| {
            let (tps, prefill) = measure(model, case.prompt, batch, ctx.tokens);
            let rss = rss_mib();
            println!(
                "{:<14} {engine:<24} batch {batch:>2}: {tps:>7.1} decode tokens/s  (prefill {prefill:.3} s, rss {rss:.0} MiB)",
                case.name
            );
            ctx.line(json!({
                "model": case.name, "engine": engine, "batch": batch, "decode_tokens_per_s": tps,
                "prefill_s": prefill, "rss_mib": rss, "prompt_tokens": case.prompt.len(),
            }));
            tps
        })
        .collect();
    let (last, first) = (BATCHES.len() - 1, 0);
    let scaling = tps[last] / tps[first];
    println!(
        "{:<14} {engine:<24} batch {} / batch {}: {scaling:.2}x",
        case.name, BATCHES[last], BATCHES[first]
    );
    ctx.line(json!({
        "model": case.name, "engine": engine, "batch_scaling": scaling,
        "batches": [BATCHES[first], BATCHES[last]],
    }));
    tps
}

fn run_case(ctx: &Context, case: &Case) {
    println!(
        "{}: {} ; prompt {} tokens",
        case.name,
        case.path.display(),
        case.prompt.len()
    );
    let before = rss_mib();
    let mut ours = open_model(case.path, Quant::None, None, &Device::Cpu).expect("qlab model");
    println!("qlab model loaded: +{:.0} MiB", rss_mib() - before);
    let qlab = bench(ctx, case, "qlab", &mut ours);
    drop(ours);
    if ctx.quick {
        return;
    }
    let before = rss_mib();
    let mut peer = (case.load_peer)(case.path, &Device::Cpu).expect("candle model");
    println!("{} loaded: +{:.0} MiB", case.peer_name, rss_mib() - before);
    let candle = bench(ctx, case, case.peer_name, peer.as_mut());
    for ((batch, q), c) in BATCHES.iter().zip(&qlab).zip(&candle) {
        let ratio = q / c;
        println!(
            "{:<14} batch {batch:>2}: qlab / {} = {ratio:.2}x",
            case.name, case.peer_name
        );
        ctx.line(json!({
            "model": case.name, "batch": batch, "qlab_over_candle": ratio,
            "qlab_decode_tokens_per_s": q, "candle_decode_tokens_per_s": c,
        }));
    }
}

fn load_llama(path: &Path, device: &Device) -> candle_core::Result<Box<dyn CausalLm>> {
    Ok(Box::new(CandleQuantizedLlama::load(path, device)?))
}

fn load_qwen2(path: &Path, device: &Device) -> candle_core::Result<Box<dyn CausalLm>> {
    Ok(Box::new(CandleQuantizedQwen2::load(path, device)?))
}

/// The Qwen2-0.5B-shaped file: `QLAB_BENCH_QWEN2_GGUF`, or written now by the repository's script; Err says
/// why there is none.
fn qwen2_gguf() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("QLAB_BENCH_QWEN2_GGUF") {
        return Ok(PathBuf::from(path));
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("qwen2-0.5b-random-q4_k_m.gguf");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make_qwen2_q4km.py");
    let made = Command::new("python3")
        .arg(&script)
        .arg(&out)
        .output()
        .map_err(|e| format!("cannot run python3 ({e})"))?;
    if !made.status.success() {
        return Err(format!(
            "{} failed (needs `pip install gguf numpy`): {}",
            script.display(),
            String::from_utf8_lossy(&made.stderr).trim()
        ));
    }
    Ok(out)
}

fn main() {
    qlab::allocator::keep_freed_pages();
    let tokens: usize = std::env::var("QLAB_BENCH_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let quick = std::env::var_os("QLAB_BENCH_QUICK").is_some_and(|v| v != "0");
    let ctx = Context::new(tokens, quick);
    println!(
        "threads: {} ; {tokens} new tokens per row ; {} (avx512: {})",
        ctx.threads, ctx.cpu, ctx.avx512
    );
    let demo = demo_model()
        .resolve(&ResolveOptions::from_env().expect("cache dir"))
        .expect("demo model");
    let tokenizer = Tokenizer::load(&demo).expect("tokenizer");
    let prompt = tokenizer.encode(PROMPT, true).expect("encode");
    run_case(
        &ctx,
        &Case {
            name: "demo-smollm2",
            path: &demo,
            prompt: &prompt,
            peer_name: "candle quantized_llama",
            load_peer: load_llama,
        },
    );
    if quick {
        return;
    }
    match qwen2_gguf() {
        Ok(path) => {
            // Fixed ids spread over the vocabulary (the weights are random, so any ids do).
            let prompt: Vec<u32> = (0..16u32).map(|i| (i * 7919 + 11) % 75_000).collect();
            run_case(
                &ctx,
                &Case {
                    name: "qwen2-0.5b",
                    path: &path,
                    prompt: &prompt,
                    peer_name: "candle quantized_qwen2",
                    load_peer: load_qwen2,
                },
            );
        }
        Err(why) => println!("qwen2-0.5b skipped: {why}; or name a file in QLAB_BENCH_QWEN2_GGUF"),
    }
}
