//! Decode speed on the demo model (SmolLM2-135M-Instruct Q4_1 GGUF): qlab's generation path against
//! candle-transformers' quantized_llama on the same file, batch 1 and batch 10, greedy, in one run.
//!
//! `cargo bench --bench decode` (threads: RAYON_NUM_THREADS; tokens: QLAB_BENCH_TOKENS, default 64).

use std::path::Path;

use candle_core::Device;
use mimalloc::MiMalloc;
use qlab::model::Quant;
use qlab::model::generate::{
    CandleQuantizedLlama, CausalLm, GenerateOptions, Sampling, generate, open_model,
};
use qlab::model::text::tokenizer::Tokenizer;
use qlab::source::{ResolveOptions, demo_model};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

const PROMPT: &str = "Write a short story about a robot who learns to paint.";

fn rss_mib() -> f64 {
    memory_stats::memory_stats().map_or(0.0, |m| m.physical_mem as f64 / (1024.0 * 1024.0))
}

/// Decode tokens per second (prefill excluded) and prefill seconds, after one warm-up run.
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
    let (_, stats) = generate(model, &prompts, &opts, &mut |_| {}).expect("generate");
    let decoded = (stats.new_tokens - batch) as f64;
    (decoded / stats.decode_s, stats.prefill_s)
}

fn bench(name: &str, model: &mut dyn CausalLm, prompt: &[u32], tokens: usize) {
    for batch in [1, 10] {
        let (tps, prefill) = measure(model, prompt, batch, tokens);
        println!(
            "{name:<28} batch {batch:>2}: {tps:>7.1} decode tokens/s  (prefill {:.3} s, rss {:.0} MiB)",
            prefill,
            rss_mib()
        );
    }
}

fn main() {
    let tokens: usize = std::env::var("QLAB_BENCH_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let path = demo_model()
        .resolve(&ResolveOptions::from_env().expect("cache dir"))
        .expect("demo model");
    let tokenizer = Tokenizer::load(&path).expect("tokenizer");
    let prompt = tokenizer.encode(PROMPT, true).expect("encode");
    println!(
        "demo model {} ; prompt {} tokens ; {tokens} new tokens per row",
        path.display(),
        prompt.len()
    );
    println!("threads: {}", candle_core::utils::get_num_threads());
    run_qlab(&path, &prompt, tokens);
    let before = rss_mib();
    let mut peer = CandleQuantizedLlama::load(&path, &Device::Cpu).expect("candle quantized_llama");
    println!(
        "candle quantized_llama loaded: +{:.0} MiB",
        rss_mib() - before
    );
    bench("candle quantized_llama", &mut peer, &prompt, tokens);
}

fn run_qlab(path: &Path, prompt: &[u32], tokens: usize) {
    let before = rss_mib();
    let mut model = open_model(path, Quant::None, None, &Device::Cpu).expect("qlab model");
    println!("qlab model loaded: +{:.0} MiB", rss_mib() - before);
    bench("qlab", &mut model, prompt, tokens);
}
