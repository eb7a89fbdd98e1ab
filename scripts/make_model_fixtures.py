#!/usr/bin/env python3
"""Reference fixtures for qlab's model engine, produced with Hugging Face transformers + PEFT on CPU (f32).

usage: python3 scripts/make_model_fixtures.py [OUT_DIR]   (default tests/fixtures/models)
needs: pip install torch transformers peft safetensors   (bitsandbytes for the bnb-4bit fixture)

For each family (llama with llama3 rope scaling, mistral with a sliding window, qwen2 with qkv bias and tied
embeddings, gemma, gemma2 with soft-capping and alternating sliding windows) it writes a tiny random model
(config.json + model.safetensors) and:
  expected.safetensors  input_ids, attention_mask, position_ids (left-padded batch) and logits;
                        adapter_logits (same batch with the adapter); train_ids, train_attention_mask,
                        train_loss_mask (right-padded batch, prompt positions masked) and the LoRA gradients
                        under PEFT key names with a `grad.` prefix
  expected.json         greedy continuation ids of row 0, loss, LoRA settings
  adapter/              PEFT save_pretrained of a LoRA (r=4, alpha=8, all 7 targets) with non-zero A and B
bnb4/ holds a llama quantized by bitsandbytes (NF4, double quantization, saved as transformers saves it)
and the logits of the dequantized model.
"""
import json, os, shutil, sys

import torch
from safetensors.torch import save_file
from transformers import (Gemma2Config, GemmaConfig, LlamaConfig, MistralConfig, Qwen2Config,
                          AutoModelForCausalLM)
from peft import LoraConfig, get_peft_model

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/models"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
              rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def configs():
    yield "llama", LlamaConfig(**COMMON, rope_theta=10000.0, tie_word_embeddings=False,
                               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    yield "mistral", MistralConfig(**COMMON, rope_theta=1000000.0, sliding_window=4, tie_word_embeddings=False)
    yield "qwen2", Qwen2Config(**COMMON, rope_theta=1000000.0, tie_word_embeddings=True)
    yield "gemma", GemmaConfig(**{**COMMON, "num_key_value_heads": 1, "head_dim": 32},
                               hidden_activation="gelu_pytorch_tanh")
    yield "gemma2", Gemma2Config(**COMMON, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=24,
                                 sliding_window=4, attn_logit_softcapping=2.0, final_logit_softcapping=3.0)


def randomize(model, gemma):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(0.1 * noise if gemma else 1.0 + 0.1 * noise)
            else:
                p.copy_(0.15 * noise)


def batches():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 128, (2, 10), generator=g)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    ids[1, :3] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    tids = torch.randint(3, 128, (2, 10), generator=g)
    tmask = torch.ones(2, 10, dtype=torch.long)
    tmask[1, 8:] = 0  # right padding
    tids[1, 8:] = 0
    labels = tids.clone()
    labels[0, :4] = -100  # a prompt
    labels[tmask == 0] = -100
    return ids, mask, pos, tids, tmask, labels


def greedy(model, prompt, n):
    ids = prompt.clone()
    for _ in range(n):
        logits = model(input_ids=ids).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, prompt.shape[1]:].tolist()


def make_family(name, cfg):
    torch.manual_seed(0)
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
    randomize(model, name.startswith("gemma"))
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, safe_serialization=True)
    for extra in ["generation_config.json"]:
        if os.path.exists(os.path.join(d, extra)):
            os.remove(os.path.join(d, extra))
    ids, mask, pos, tids, tmask, labels = batches()
    exp = {"input_ids": ids.to(torch.int64), "attention_mask": mask, "position_ids": pos,
           "train_ids": tids, "train_attention_mask": tmask, "train_loss_mask": (labels != -100).long()}
    with torch.no_grad():
        exp["logits"] = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()
        cont = greedy(model, ids[:1, 3:], 8)

    lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS, bias="none")
    peft_model = get_peft_model(model, lcfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for pname, p in peft_model.named_parameters():
            if "lora_B" in pname or "lora_A" in pname:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    peft_model.save_pretrained(os.path.join(d, "adapter"))
    os.remove(os.path.join(d, "adapter", "README.md"))
    with torch.no_grad():
        exp["adapter_logits"] = peft_model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()
    tpos = torch.arange(10).unsqueeze(0).expand(2, 10)
    out = peft_model(input_ids=tids, attention_mask=tmask, position_ids=tpos, labels=labels)
    out.loss.backward()
    for pname, p in peft_model.named_parameters():
        if p.requires_grad:
            exp["grad." + pname.replace(".default", "")] = p.grad.detach().clone()
    save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(d, "expected.safetensors"))
    meta = {"family": name, "greedy_prompt_row": 0, "greedy_prompt_from": 3, "greedy_ids": cont,
            "loss": out.loss.item(), "lora_rank": 4, "lora_alpha": 8,
            "transformers": __import__("transformers").__version__, "peft": __import__("peft").__version__,
            "torch": torch.__version__}
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(name, "loss", out.loss.item(), "greedy", cont)


def make_bnb():
    import bitsandbytes.functional as bf
    cfg = next(c for n, c in configs() if n == "llama")
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
    randomize(model, False)
    d = os.path.join(OUT, "bnb4")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    tensors = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(t in name for t in TARGETS):
                packed, qs = bf.quantize_4bit(p.data.contiguous(), blocksize=64, compress_statistics=True,
                                              quant_type="nf4")
                tensors[name] = packed
                for k, v in qs.as_dict(packed=True).items():
                    tensors[f"{name}.{k}"] = v
                p.copy_(bf.dequantize_4bit(packed, qs))
            else:
                tensors[name] = p.data.clone()
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "model.safetensors"))
    conf = cfg.to_dict()
    conf["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                   "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                                   "bnb_4bit_compute_dtype": "float32"}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(conf, f, indent=1)
    ids, mask, pos, *_ = batches()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()
    save_file({"input_ids": ids, "attention_mask": mask, "position_ids": pos, "logits": logits},
              os.path.join(d, "expected.safetensors"))
    print("bnb4 ok", "bitsandbytes", __import__("bitsandbytes").__version__)


if __name__ == "__main__":
    for name, cfg in configs():
        make_family(name, cfg)
    make_bnb()
