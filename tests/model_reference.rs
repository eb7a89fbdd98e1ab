//! The model engine checked against Hugging Face transformers + PEFT (fixtures made by
//! scripts/make_model_fixtures.py): logits, greedy continuations, PEFT adapters, loss and LoRA gradients,
//! bitsandbytes 4-bit and GGUF loading, and clear errors on bad files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, IndexOp, Tensor};
use qlab::model::kernels::cpu::bf16::Precision;
use qlab::model::{Decoder, KvCache, ModelError, Positions, Quant, load_model};
use qlab::train::keep_blocks::{BlockBytes, KeepBlocks};
use qlab::train::step::{StepOptions, TrainBatch};

const FAMILIES: [&str; 5] = ["llama", "mistral", "qwen2", "gemma", "gemma2"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn expected(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap()
}

fn meta(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap()
}

fn u32s(t: &Tensor) -> Tensor {
    t.to_dtype(DType::U32).unwrap()
}

/// Max |a - b| over the positions where `mask` `[b, s]` is 1.
fn max_err_where(a: &Tensor, b: &Tensor, mask: &Tensor) -> f32 {
    let m = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
    let d = (a - b).unwrap().abs().unwrap().broadcast_mul(&m).unwrap();
    d.max_all().unwrap().to_scalar::<f32>().unwrap()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let num = (a - b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .sqrt()
        .unwrap();
    let den = b.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
    (num / den).unwrap().to_scalar::<f32>().unwrap()
}

fn logits(model: &Decoder, exp: &HashMap<String, Tensor>) -> Tensor {
    model
        .forward(
            &u32s(&exp["input_ids"]),
            &Positions::PerRow(u32s(&exp["position_ids"])),
            Some(&exp["attention_mask"]),
            None,
        )
        .unwrap()
}

#[test]
fn logits_match_hf_for_every_family() {
    for fam in FAMILIES {
        let dir = fixture(fam);
        let exp = expected(&dir);
        let model = load_model(&dir, Quant::None, &Device::Cpu).unwrap();
        let err = max_err_where(
            &logits(&model, &exp),
            &exp["logits"],
            &exp["attention_mask"],
        );
        assert!(err <= 1e-4, "{fam}: max abs logit error {err}");
    }
}

#[test]
fn greedy_continuation_with_kv_cache_matches_hf() {
    for fam in FAMILIES {
        let dir = fixture(fam);
        let exp = expected(&dir);
        let m = meta(&dir);
        let want: Vec<u32> = m["greedy_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let from = m["greedy_prompt_from"].as_u64().unwrap() as usize;
        let model = load_model(&dir, Quant::None, &Device::Cpu).unwrap();
        let ids = u32s(&exp["input_ids"]);
        let prompt = ids.i((0..1, from..)).unwrap();
        let mut cache = KvCache::new(model.blocks.len());
        let mut next = prompt;
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let pos = Positions::From(cache.len());
            let last = model
                .forward_last(&next, &pos, None, Some(&mut cache))
                .unwrap();
            let id = last.argmax(1).unwrap().to_vec1::<u32>().unwrap()[0];
            got.push(id);
            next = Tensor::new(&[[id]], &Device::Cpu).unwrap();
        }
        assert_eq!(got, want, "{fam}");
    }
}

#[test]
fn peft_adapter_loads_to_the_same_logits_and_merges() {
    for fam in FAMILIES {
        let dir = fixture(fam);
        let exp = expected(&dir);
        let mut model = load_model(&dir, Quant::None, &Device::Cpu).unwrap();
        let spec = model.load_peft(&dir.join("adapter")).unwrap();
        assert_eq!((spec.rank, spec.targets.len()), (4, 7));
        let err = max_err_where(
            &logits(&model, &exp),
            &exp["adapter_logits"],
            &exp["attention_mask"],
        );
        assert!(err <= 1e-4, "{fam}: adapter logits error {err}");
        model.merge_lora().unwrap();
        let err = max_err_where(
            &logits(&model, &exp),
            &exp["adapter_logits"],
            &exp["attention_mask"],
        );
        assert!(err <= 1e-4, "{fam}: merged adapter logits error {err}");
    }
}

fn train_batch(exp: &HashMap<String, Tensor>) -> TrainBatch {
    TrainBatch {
        input_ids: u32s(&exp["train_ids"]),
        loss_mask: exp["train_loss_mask"].clone(),
        attention_mask: Some(exp["train_attention_mask"].clone()),
    }
}

/// A family's fixture: the expected tensors, PEFT's loss, and the f32 model with the PEFT adapter loaded.
fn with_peft_adapter(fam: &str) -> (HashMap<String, Tensor>, f32, Decoder) {
    let dir = fixture(fam);
    let want_loss = meta(&dir)["loss"].as_f64().unwrap() as f32;
    let mut model = load_model(&dir, Quant::None, &Device::Cpu).unwrap();
    model.load_peft(&dir.join("adapter")).unwrap();
    (expected(&dir), want_loss, model)
}

#[test]
fn loss_and_lora_gradients_match_peft_with_and_without_checkpointing() {
    for fam in FAMILIES {
        let (exp, want_loss, model) = with_peft_adapter(fam);
        // Checkpointed steps keep the last blocks whole (all of them with saved frozen products; the
        // second of two within `one_more`), or recompute them all (a zero budget, or a family the fused
        // CPU block does not serve).
        let tokens = exp["train_ids"].elem_count();
        let one_more = BlockBytes::of(&model.blocks[0], tokens, false).map(|b| {
            let blocks = model.blocks.len();
            KeepBlocks::Budget(blocks * b.checkpointed + b.kept - b.checkpointed)
        });
        if let Some(keep) = one_more {
            assert_eq!(model.kept_blocks(tokens, keep, false), 1, "{fam}");
            let all = model.blocks.len();
            assert_eq!(model.kept_blocks(tokens, KeepBlocks::Auto, true), all);
        }
        for (checkpointing, save_frozen_products, keep) in [
            (true, true, KeepBlocks::Auto),
            (true, true, KeepBlocks::Budget(0)),
            (true, false, KeepBlocks::Auto),
            (true, false, one_more.unwrap_or_default()),
            (false, false, KeepBlocks::Auto),
        ] {
            let opts = StepOptions {
                checkpointing,
                loss_chunk: 5,
                dropout_seed: None,
                save_frozen_products,
                keep,
                ..StepOptions::default()
            };
            let out = model.loss_and_grads(&train_batch(&exp), &opts).unwrap();
            assert!(
                ((out.loss - want_loss) / want_loss).abs() <= 1e-4,
                "{fam}: loss {} vs {want_loss}",
                out.loss
            );
            assert_eq!(out.grads.len(), 2 * 7 * model.blocks.len());
            for (key, g) in &out.grads {
                let want = &exp[&format!("grad.{key}")];
                let e = rel_err(g, want);
                assert!(
                    e <= 1e-4,
                    "{fam} {key} (checkpointing {checkpointing}, {keep:?}): relative error {e}"
                );
            }
        }
    }
}

/// The CPU's bf16 products (on CPUs with AVX512_BF16, the default there): loss and LoRA gradients stay
/// within bf16's rounding of PEFT's f32 figures, with and without checkpointing; and they differ from the
/// f32 path's, so bf16 did run.
#[test]
fn bf16_products_keep_loss_and_gradients_within_rounding_of_peft() {
    if !Precision::resolve(true).eq(&Precision::Bf16) {
        eprintln!("skipped: this CPU lacks AVX512_BF16 (training stays in f32 here)");
        return;
    }
    for fam in FAMILIES {
        let (exp, want_loss, model) = with_peft_adapter(fam);
        for checkpointing in [true, false] {
            let opts = StepOptions {
                checkpointing,
                loss_chunk: 5,
                precision: Precision::Bf16,
                ..StepOptions::default()
            };
            let out = model.loss_and_grads(&train_batch(&exp), &opts).unwrap();
            let loss_err = ((out.loss - want_loss) / want_loss).abs();
            let worst = out
                .grads
                .iter()
                .map(|(key, g)| rel_err(g, &exp[&format!("grad.{key}")]))
                .fold(0f32, f32::max);
            eprintln!(
                "{fam} checkpointing {checkpointing}: loss {loss_err:e}, worst gradient {worst:e}"
            );
            assert!(loss_err <= 2e-3, "{fam}: loss {} vs {want_loss}", out.loss);
            assert!(
                worst <= 6e-2,
                "{fam}: a gradient's relative error is {worst}"
            );
            assert!(
                worst >= 1e-5,
                "{fam}: gradients as exact as f32's ({worst}): bf16 did not run"
            );
        }
    }
}

#[test]
fn every_lora_tensor_gets_a_nonzero_gradient_on_an_nf4_base() {
    for fam in FAMILIES {
        let dir = fixture(fam);
        let exp = expected(&dir);
        let mut model = load_model(&dir, Quant::Nf4, &Device::Cpu).unwrap();
        model.load_peft(&dir.join("adapter")).unwrap();
        let out = model
            .loss_and_grads(&train_batch(&exp), &StepOptions::default())
            .unwrap();
        assert_eq!(out.grads.len(), model.lora_params().len());
        for (key, g) in &out.grads {
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{fam}: {key} has gradient norm {norm}"
            );
        }
    }
}

#[test]
fn nf4_quantized_at_load_matches_bitsandbytes_and_takes_about_half_a_byte_per_parameter() {
    // bnb4 holds the llama fixture's weights quantized by bitsandbytes: qlab's NF4 of the same weights must
    // give nearly the same logits (codes agree; only the 8-bit absmax code tables differ).
    let dir = fixture("llama");
    let bnb = expected(&fixture("bnb4"));
    let model = load_model(&dir, Quant::Nf4, &Device::Cpu).unwrap();
    let (bytes, params) = model.projection_storage();
    let bpp = bytes as f64 / params as f64;
    assert!(bpp < 0.52, "bytes per parameter {bpp}");
    let err = max_err_where(
        &logits(&model, &bnb),
        &bnb["logits"],
        &bnb["attention_mask"],
    );
    assert!(err < 0.1, "nf4 vs bitsandbytes logit error {err}");
}

#[test]
fn bitsandbytes_4bit_checkpoint_matches_hf_dequantized_logits() {
    let dir = fixture("bnb4");
    let exp = expected(&dir);
    let model = load_model(&dir, Quant::None, &Device::Cpu).unwrap();
    assert_eq!(model.blocks[0].q.base.weight.kind(), "nf4");
    let err = max_err_where(
        &logits(&model, &exp),
        &exp["logits"],
        &exp["attention_mask"],
    );
    assert!(err <= 1e-4, "bnb4 logits error {err}");
}

/// Writes the llama fixture as a llama.cpp-style GGUF: q/k rows permuted, llama3 scaling as rope_freqs.
fn write_llama_gguf(path: &Path) {
    let dir = fixture("llama");
    let w = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let cfg = qlab::model::ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
    let (hd, half) = (cfg.head_dim, cfg.head_dim / 2);
    let permute = |t: &Tensor, heads: usize| {
        let mut idx = vec![0u32; heads * hd];
        for h in 0..heads {
            for part in 0..2 {
                for i in 0..half {
                    idx[h * hd + 2 * i + part] = (h * hd + part * half + i) as u32;
                }
            }
        }
        t.index_select(&Tensor::new(idx.as_slice(), &Device::Cpu).unwrap(), 0)
            .unwrap()
    };
    let mut plain = cfg.clone();
    plain.rope_scaling = None;
    let base = qlab::model::decoder::layers::inv_freq(&plain);
    let scaled = qlab::model::decoder::layers::inv_freq(&cfg);
    let factors: Vec<f32> = base.iter().zip(&scaled).map(|(b, s)| b / s).collect();
    let mut tensors: Vec<(String, Tensor)> = vec![
        (
            "token_embd.weight".into(),
            w["model.embed_tokens.weight"].clone(),
        ),
        ("output_norm.weight".into(), w["model.norm.weight"].clone()),
        ("output.weight".into(), w["lm_head.weight"].clone()),
        (
            "rope_freqs.weight".into(),
            Tensor::new(factors.as_slice(), &Device::Cpu).unwrap(),
        ),
    ];
    for i in 0..cfg.num_layers {
        let p = format!("model.layers.{i}");
        let g = |n: &str| format!("blk.{i}.{n}.weight");
        tensors.push((
            g("attn_norm"),
            w[&format!("{p}.input_layernorm.weight")].clone(),
        ));
        tensors.push((
            g("ffn_norm"),
            w[&format!("{p}.post_attention_layernorm.weight")].clone(),
        ));
        tensors.push((
            g("attn_q"),
            permute(&w[&format!("{p}.self_attn.q_proj.weight")], cfg.num_heads),
        ));
        tensors.push((
            g("attn_k"),
            permute(
                &w[&format!("{p}.self_attn.k_proj.weight")],
                cfg.num_kv_heads,
            ),
        ));
        for (n, h) in [
            ("attn_v", "self_attn.v_proj"),
            ("attn_output", "self_attn.o_proj"),
            ("ffn_gate", "mlp.gate_proj"),
            ("ffn_up", "mlp.up_proj"),
            ("ffn_down", "mlp.down_proj"),
        ] {
            tensors.push((g(n), w[&format!("{p}.{h}.weight")].clone()));
        }
    }
    let q: Vec<(String, QTensor)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), QTensor::quantize(t, GgmlDType::F32).unwrap()))
        .collect();
    let md: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.embedding_length", Value::U32(64)),
        ("llama.block_count", Value::U32(cfg.num_layers as u32)),
        ("llama.feed_forward_length", Value::U32(128)),
        (
            "llama.attention.head_count",
            Value::U32(cfg.num_heads as u32),
        ),
        (
            "llama.attention.head_count_kv",
            Value::U32(cfg.num_kv_heads as u32),
        ),
        ("llama.attention.key_length", Value::U32(hd as u32)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-6)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.context_length", Value::U32(64)),
    ];
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}

#[test]
fn gguf_llama_with_permuted_qk_matches_hf_and_exports_peft_in_hf_order() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("tiny-llama.gguf");
    write_llama_gguf(&gguf);
    let dir = fixture("llama");
    let exp = expected(&dir);
    let mut model = load_model(&gguf, Quant::None, &Device::Cpu).unwrap();
    assert!(model.config.rope_interleaved);
    let err = max_err_where(
        &logits(&model, &exp),
        &exp["logits"],
        &exp["attention_mask"],
    );
    assert!(err <= 1e-4, "gguf logits error {err}");
    let spec = model.load_peft(&dir.join("adapter")).unwrap();
    let err = max_err_where(
        &logits(&model, &exp),
        &exp["adapter_logits"],
        &exp["attention_mask"],
    );
    assert!(err <= 1e-4, "gguf + peft adapter logits error {err}");
    let out = tmp.path().join("exported");
    model.save_peft(&out, &spec, Some("tiny-llama")).unwrap();
    let a =
        candle_core::safetensors::load(dir.join("adapter/adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let b = candle_core::safetensors::load(out.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap();
    assert_eq!(a.len(), b.len());
    for (k, t) in &a {
        assert_eq!(rel_err(&b[k], t), 0.0, "{k} differs after export");
    }
}

#[test]
fn saved_adapter_reloads_to_identical_logits() {
    let dir = fixture("qwen2");
    let exp = expected(&dir);
    let mut model = load_model(&dir, Quant::None, &Device::Cpu).unwrap();
    let spec = model.load_peft(&dir.join("adapter")).unwrap();
    let before = logits(&model, &exp);
    let tmp = tempfile::tempdir().unwrap();
    model.save_peft(tmp.path(), &spec, None).unwrap();
    let mut again = load_model(&dir, Quant::None, &Device::Cpu).unwrap();
    let spec2 = again.load_peft(tmp.path()).unwrap();
    assert_eq!(spec.targets, spec2.targets);
    assert_eq!(
        max_err_where(&logits(&again, &exp), &before, &exp["attention_mask"]),
        0.0
    );
}

fn copy_fixture(fam: &str, to: &Path) {
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(fam).join(f), to.join(f)).unwrap();
    }
}

#[test]
fn bad_model_files_give_errors_that_name_the_file() {
    let dev = Device::Cpu;
    let tmp = tempfile::tempdir().unwrap();

    let truncated = tmp.path().join("truncated");
    std::fs::create_dir(&truncated).unwrap();
    copy_fixture("llama", &truncated);
    let st = truncated.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_model(&truncated, Quant::None, &dev).unwrap_err();
    assert!(
        matches!(err, ModelError::Corrupt { .. }) && err.to_string().contains("model.safetensors"),
        "{err}"
    );

    let gguf = tmp.path().join("bad.gguf");
    write_llama_gguf(&gguf);
    let bytes = std::fs::read(&gguf).unwrap();
    std::fs::write(&gguf, &bytes[..bytes.len() - 1000]).unwrap();
    let err = load_model(&gguf, Quant::None, &dev).unwrap_err();
    assert!(err.to_string().contains("bad.gguf"), "{err}");
    std::fs::write(&gguf, b"GGUF not really").unwrap();
    let err = load_model(&gguf, Quant::None, &dev).unwrap_err();
    assert!(err.to_string().contains("bad.gguf"), "{err}");

    let unknown = tmp.path().join("unknown");
    std::fs::create_dir(&unknown).unwrap();
    copy_fixture("llama", &unknown);
    let cfg = std::fs::read_to_string(unknown.join("config.json"))
        .unwrap()
        .replace("\"llama\"", "\"falcon\"");
    std::fs::write(unknown.join("config.json"), cfg).unwrap();
    let err = load_model(&unknown, Quant::None, &dev).unwrap_err();
    assert!(
        matches!(err, ModelError::UnknownArchitecture { .. }) && err.to_string().contains("falcon"),
        "{err}"
    );

    let mismatch = tmp.path().join("mismatch");
    std::fs::create_dir(&mismatch).unwrap();
    copy_fixture("llama", &mismatch);
    let cfg = std::fs::read_to_string(mismatch.join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\": 128", "\"intermediate_size\": 256");
    std::fs::write(mismatch.join("config.json"), cfg).unwrap();
    let err = load_model(&mismatch, Quant::None, &dev).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, ModelError::ShapeMismatch { .. })
            && msg.contains("model.safetensors")
            && msg.contains("256"),
        "{msg}"
    );

    let pickle = tmp.path().join("pickle");
    std::fs::create_dir(&pickle).unwrap();
    std::fs::copy(
        fixture("llama").join("config.json"),
        pickle.join("config.json"),
    )
    .unwrap();
    std::fs::write(pickle.join("pytorch_model.bin"), b"not loaded").unwrap();
    let err = load_model(&pickle, Quant::None, &dev).unwrap_err();
    assert!(
        matches!(err, ModelError::PickleRefused { .. }) && err.to_string().contains("safetensors"),
        "{err}"
    );

    let err = load_model(&fixture("llama"), Quant::Ggml(GgmlDType::Q4K), &dev).unwrap_err();
    assert!(err.to_string().contains("q4_0"), "{err}");
}

#[test]
fn seeded_lora_dropout_gives_the_same_gradients_with_checkpointing() {
    let dir = fixture("llama");
    let exp = expected(&dir);
    let mut model = load_model(&dir, Quant::None, &Device::Cpu).unwrap();
    model.load_peft(&dir.join("adapter")).unwrap();
    for blk in &mut model.blocks {
        for t in qlab::model::Target::ALL {
            if let Some(l) = &mut blk.linear_mut(t).lora {
                l.dropout = 0.3;
            }
        }
    }
    // Auto keeps no block with dropout (its masks make a kept block dearer than a checkpointed one);
    // an unbounded budget keeps both, masks and all.
    let run = |checkpointing: bool, seed: u64, keep: KeepBlocks| {
        let opts = StepOptions {
            checkpointing,
            loss_chunk: 7,
            dropout_seed: Some(seed),
            save_frozen_products: checkpointing,
            keep,
            ..StepOptions::default()
        };
        model.loss_and_grads(&train_batch(&exp), &opts).unwrap()
    };
    let auto = KeepBlocks::Auto;
    let (a, b, other) = (run(true, 5, auto), run(false, 5, auto), run(true, 6, auto));
    let kept = run(true, 5, KeepBlocks::Budget(usize::MAX));
    assert_eq!(kept.loss, b.loss, "kept blocks against the plain graph");
    assert!(
        kept.grads
            .iter()
            .zip(&b.grads)
            .all(|((_, x), (_, y))| rel_err(x, y) == 0.0)
    );
    assert!(
        (a.loss - b.loss).abs() <= 1e-6 * a.loss.abs(),
        "{} vs {}",
        a.loss,
        b.loss
    );
    assert_ne!(
        a.loss, other.loss,
        "a different dropout seed must change the loss"
    );
    for ((k, ga), (_, gb)) in a.grads.iter().zip(&b.grads) {
        let e = rel_err(ga, gb);
        assert!(e <= 1e-5, "{k}: checkpointed vs plain relative error {e}");
    }
}
