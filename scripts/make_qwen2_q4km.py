#!/usr/bin/env python3
"""A random-weight GGUF at Qwen2-0.5B's dimensions in llama.cpp's Q4_K_M mix, for decode benchmarks
(benches/decode.rs): both qlab and candle-transformers' quantized_qwen2 load it.

usage: python3 scripts/make_qwen2_q4km.py OUT.gguf [--seed N] [--layers N]
needs: pip install gguf numpy   (runs in a few seconds; the same seed writes the same bytes)

Dimensions: hidden 896, intermediate 4864, 24 layers, 14 heads (head dim 64), 2 KV heads, vocabulary 151936,
tied embeddings, rope theta 1e6, biases on q/k/v. Tensor types follow llama.cpp's Q4_K_M rule
(llama_tensor_get_type): Q4_K by default; Q6_K for attn_v and ffn_down of the layers `use_more_bits` picks
(half of them); the token embedding (tied, so it is also the output) Q6_K, or Q8_0 when its rows are not a
multiple of 256; any other K-quant whose rows are not a multiple of 256 falls back as llama.cpp does (Q4_K to
Q5_0, Q6_K to Q8_0). At Qwen2-0.5B's width (896 = 3.5 x 256) that gives, as in the published Q4_K_M file:
token_embd Q8_0; attn_q/k/output, ffn_gate/up Q5_0; attn_v Q8_0 or Q5_0; ffn_down Q6_K or Q4_K; norms and
biases F32. gguf-py cannot quantize K-quants, so the blocks are written directly: random quant bytes with
small f16 scales, giving weights of roughly +-0.05. No tokenizer is stored: neither loader needs one.
"""
import argparse

import numpy as np
from gguf import GGMLQuantizationType as T, GGUFWriter, GGML_QUANT_SIZES

HIDDEN, FF, LAYERS, HEADS, KV_HEADS, VOCAB = 896, 4864, 24, 14, 2, 151936
HEAD_DIM = HIDDEN // HEADS
QK_K = 256
LLAMA_FTYPE_MOSTLY_Q4_K_M = 15

# Where each block keeps its f16 scale(s): (byte offset, value of the scale); the rest are random quants.
# Q4_K: d, dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles (w = d*sc*q - dmin*m, q 0..15, sc/m 0..63)
# Q6_K: 128 ql, 64 qh, 16 int8 scales, d (w = d*sc*(q-32), q 0..63)
# Q5_0: d, 4 qh, 16 qs (w = d*(q-16), q 0..31); Q8_0: d, 32 int8 (w = d*q)
SCALES = {
    T.Q4_K: [(0, 0.1 / (63 * 15)), (2, 0.75 / (63 * 15))],
    T.Q6_K: [(208, 0.05 / (64 * 32))],
    T.Q5_0: [(0, 0.05 / 16)],
    T.Q8_0: [(0, 0.05 / 128)],
}


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's choice of the layers that get more bits in Q4_K_M."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def fallback(qtype: T, cols: int) -> T:
    """llama.cpp's replacement for a K-quant whose rows are not a multiple of 256."""
    if cols % QK_K == 0:
        return qtype
    return {T.Q4_K: T.Q5_0, T.Q6_K: T.Q8_0}.get(qtype, qtype)


def tensor_type(name: str, layer: int, cols: int) -> T:
    if name == "token_embd.weight":
        return T.Q8_0 if cols % QK_K else T.Q6_K
    more = use_more_bits(layer, LAYERS)
    if name.endswith(("attn_v.weight", "ffn_down.weight")) and more:
        return fallback(T.Q6_K, cols)
    return fallback(T.Q4_K, cols)


def random_blocks(rng: np.random.Generator, qtype: T, rows: int, cols: int) -> np.ndarray:
    """(rows, bytes per row) of valid blocks: random quants, every f16 scale a jittered small constant."""
    block, size = GGML_QUANT_SIZES[qtype]
    n = rows * (cols // block)
    data = np.frombuffer(rng.bytes(n * size), dtype=np.uint8).reshape(n, size).copy()
    for offset, value in SCALES[qtype]:
        d = (value * rng.uniform(0.5, 1.5, n)).astype(np.float16)
        data[:, offset:offset + 2] = d.view(np.uint8).reshape(n, 2)
    return data.reshape(rows, -1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="path of the .gguf file to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=LAYERS, help="blocks to write (fewer for quick tests)")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)

    w = GGUFWriter(args.out, "qwen2")
    w.add_name("qwen2-0.5b-random-q4_k_m")
    w.add_file_type(LLAMA_FTYPE_MOSTLY_Q4_K_M)
    w.add_quantization_version(2)
    w.add_context_length(32768)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FF)
    w.add_block_count(args.layers)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(1_000_000.0)
    w.add_layer_norm_rms_eps(1e-6)

    def quantized(name: str, rows: int, cols: int, layer: int = 0) -> None:
        qtype = tensor_type(name, layer, cols)
        w.add_tensor(name, random_blocks(rng, qtype, rows, cols), raw_dtype=qtype)

    def f32(name: str, n: int, centre: float) -> None:
        w.add_tensor(name, (centre + rng.uniform(-0.05, 0.05, n)).astype(np.float32))

    kv = KV_HEADS * HEAD_DIM
    quantized("token_embd.weight", VOCAB, HIDDEN)
    f32("output_norm.weight", HIDDEN, 1.0)
    for i in range(args.layers):
        p = f"blk.{i}"
        f32(f"{p}.attn_norm.weight", HIDDEN, 1.0)
        f32(f"{p}.ffn_norm.weight", HIDDEN, 1.0)
        for t, rows in (("attn_q", HIDDEN), ("attn_k", kv), ("attn_v", kv)):
            quantized(f"{p}.{t}.weight", rows, HIDDEN, i)
            f32(f"{p}.{t}.bias", rows, 0.0)
        quantized(f"{p}.attn_output.weight", HIDDEN, HIDDEN, i)
        quantized(f"{p}.ffn_gate.weight", FF, HIDDEN, i)
        quantized(f"{p}.ffn_up.weight", FF, HIDDEN, i)
        quantized(f"{p}.ffn_down.weight", HIDDEN, FF, i)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
