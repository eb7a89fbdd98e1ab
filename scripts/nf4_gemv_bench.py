# Few-row NF4 product kernels (scripts/nf4_gemv_variants.cu built to PTX, which includes nf4.cu) on a GPU with
# PyTorch, no Rust build: each kernel's output against an f32 product with the dequantized weight (worst element
# within 1% of the largest, as tests/cuda_reference.rs asks; the script fails at the end if any is not), then CUDA
# events around back-to-back launches queued behind matrix products (so the host's launching stays out), over
# copies of the weight that together overflow L2, at Llama-3.1-8B's projection shapes.
#   nvcc -ptx -arch=compute_80 -fmad=false -o /tmp/gemv.ptx scripts/nf4_gemv_variants.cu
#   python3 scripts/nf4_gemv_bench.py /tmp/gemv.ptx
# QLAB_GEMV_VARIANTS="mma2/w8 lut2_0/w4" times some of them (label prefixes); QLAB_GEMV_ROWS="1 10" some
# row counts; QLAB_GEMV_SHAPES="14336x4096" some shapes (n x k).
import ctypes
import json
import os
import sys

import torch

cuda = ctypes.CDLL("libcuda.so.1")
torch.zeros(1, device="cuda")
module = ctypes.c_void_p()
assert cuda.cuModuleLoadData(ctypes.byref(module), open(sys.argv[1], "rb").read() + b"\0") == 0, "load"
CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]
SHAPES = [(1024, 4096), (4096, 4096), (14336, 4096), (4096, 14336)]
ROWS = [1, 4, 10, 16]


class GemvAdd(ctypes.Structure):
    _fields_ = [("bias", ctypes.c_void_p), ("parts", ctypes.c_void_p), ("b", ctypes.c_void_p),
                ("slices", ctypes.c_int), ("rank", ctypes.c_int), ("scale", ctypes.c_float)]


def auto_warps(n, groups):
    blocks = -(-n // (16 * groups))
    w = max(4, min(16, 4096 // blocks))
    return 1 << (w.bit_length() - 1)


def tile_smem(groups, stages, warps):
    """nf4_gemv_tile's dynamic shared memory without a low-rank term: the table, acode and the warps' stage rings."""
    return (256 << 7) + 1024 + warps * stages * (16 * groups * 132)


def variants(n, k, rows):
    """(label, kernel, groups, warps, shared bytes) for [n, k] and `rows` rows; "(auto)" marks the launch
    GemvKernel::for_shape picks (src/model/quant/nf4_cuda.rs)."""
    wide = 1 if rows > 8 else 0
    g_mma = 2 if n >= 2048 else 1
    mma_auto = (f"nf4_gemv_mma{g_mma}", g_mma, auto_warps(n, g_mma))
    lut_auto = (f"nf4_gemv_lut2_{wide}", 2, 4 if n >= 8192 else 16)
    auto = lut_auto if n >= 8192 or k >= 8192 else mma_auto
    out = [(f"mma{g}/w{w}", f"nf4_gemv_mma{g}", g, w) for g, w in [(g_mma, auto_warps(n, g_mma)), (1, 16), (2, 8),
                                                                    (2, 16)]]
    out += [(f"mmap{g}/w{w}", f"nf4_gemv_mmap{g}", g, w) for g, w in [(1, 16), (2, 8), (2, 16)]]
    for kind in ["lut", "lutp"]:
        for g in [1, 2]:
            for w in [4, 8, 16]:
                out.append((f"{kind}{g}_{wide}/w{w}", f"nf4_gemv_{kind}{g}_{wide}", g, w))
    out += [(f"lut2_{wide}_r64/w{w}", f"nf4_gemv_lut2_{wide}_r64", 2, w) for w in [4, 16]]
    if k % 256 == 0:
        for g in [1, 2]:
            for s in [2, 3, 4]:
                for w in [4, 8, 16]:
                    if tile_smem(g, s, w) <= 227 * 1024:
                        out.append((f"tile{g}_{wide}_s{s}/w{w}", f"nf4_gemv_tile{g}_{wide}_s{s}", g, w))
    made = []
    for label, name, g, w in dict.fromkeys(out):
        if name.startswith("nf4_gemv_tile"):
            smem = tile_smem(g, int(name.rsplit("_s", 1)[1]), w)
        else:
            smem = 4 * w * g * 256 if name.startswith("nf4_gemv_mma") else (256 << 7) + 1024
        made.append((label + (" (auto)" if (name, g, w) == auto else ""), name, g, w, smem))
    return made


FUNCS = {}


def function(name, smem):
    if name not in FUNCS:
        f = ctypes.c_void_p()
        assert cuda.cuModuleGetFunction(ctypes.byref(f), module, name.encode()) == 0, name
        FUNCS[name] = (f, 0)
    f, allowed = FUNCS[name]
    if smem > allowed and smem > 48 * 1024:
        err = cuda.cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem)
        assert err == 0, f"{name}: {smem} bytes of shared memory refused ({err})"
        FUNCS[name] = (f, smem)
    return f


def weight(n, k, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    codes = torch.randint(0, 256, (n * k // 2,), dtype=torch.uint8, device="cuda", generator=g)
    absmax_q = torch.randint(0, 256, (n * k // 64,), dtype=torch.uint8, device="cuda", generator=g)
    nested = 0.01 + 0.01 * torch.rand(n * k // 64 // 256 + 1, device="cuda", generator=g)
    acode = torch.rand(256, device="cuda", generator=g) * 2 - 1
    tables = torch.cat([torch.tensor(NF4, device="cuda"), acode, torch.tensor([0.02], device="cuda"), nested])
    return codes, absmax_q, tables


def dequantized(n, k, w):
    codes, absmax_q, tables = w
    hi, lo = (codes >> 4).long(), (codes & 15).long()
    values = torch.stack([tables[hi], tables[lo]], dim=1).reshape(n * k)
    blocks = torch.arange(n * k // 64, device="cuda")
    scale = tables[16 + absmax_q.long()] * tables[273 + blocks // 256] + tables[272]
    return (values.reshape(-1, 64) * scale[:, None]).reshape(n, k)


def launch_args(w, x, y, n, k, rows, add):
    codes, absmax_q, tables = w
    args = [ctypes.c_void_p(codes.data_ptr()), ctypes.c_void_p(absmax_q.data_ptr()),
            ctypes.c_void_p(tables.data_ptr()), ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(y.data_ptr()),
            ctypes.c_uint64(n), ctypes.c_uint64(k), ctypes.c_int(rows), add]
    packed = (ctypes.c_void_p * len(args))(*[ctypes.cast(ctypes.pointer(a), ctypes.c_void_p) for a in args])
    return packed, args


def main():
    wanted = os.environ.get("QLAB_GEMV_VARIANTS", "").split()
    rows_list = [int(r) for r in os.environ.get("QLAB_GEMV_ROWS", "").split()] or ROWS
    shapes = [tuple(int(d) for d in s.split("x")) for s in os.environ.get("QLAB_GEMV_SHAPES", "").split()] or SHAPES
    stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
    busy = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    add = GemvAdd(None, None, None, 0, 0, 0.0)
    results, bad = {}, []
    print("microseconds a product (TB/s of codes and absmax codes); err = worst element / largest, against f32")
    for n, k in shapes:
        nbytes = n * k // 2 + n * k // 64
        copies = max(2, min(48, 120_000_000 // nbytes))
        reps = max(2, min(16, 96 // copies))
        ws = [weight(n, k, i) for i in range(copies)]
        dense = dequantized(n, k, ws[0])
        for rows in rows_list:
            x = torch.randn(rows, k, device="cuda").to(torch.bfloat16)
            want = x.float() @ dense.t()
            line = []
            for label, name, g, warps, smem in variants(n, k, rows):
                if wanted and not any(label.startswith(v) for v in wanted):
                    continue
                f = function(name, smem)
                ys = [torch.empty(rows, n, device="cuda", dtype=torch.bfloat16) for _ in ws]
                made = [launch_args(w, x, y, n, k, rows, add) for w, y in zip(ws, ys)]
                grid = -(-n // (16 * g))

                def run():
                    for packed, _ in made:
                        assert cuda.cuLaunchKernel(f, grid, 1, 1, 32 * warps, 1, 1, smem, stream, packed, None) == 0

                run()
                torch.cuda.synchronize()
                err = ((ys[0].float() - want).abs().max() / want.abs().max()).item()
                if not err <= 1e-2:
                    bad.append(f"{n}x{k} rows {rows} {label}: err {err:.3g}")
                times = []
                for _ in range(3):
                    for _ in range(3):
                        busy @ busy
                    start, end = torch.cuda.Event(True), torch.cuda.Event(True)
                    start.record()
                    for _ in range(reps):
                        run()
                    end.record()
                    torch.cuda.synchronize()
                    times.append(start.elapsed_time(end) * 1000 / (reps * copies))
                best = min(times)
                results.setdefault(f"{n}x{k}", {}).setdefault(str(rows), {})[label] = {
                    "us": round(best, 2), "err": float(f"{err:.3g}")}
                line.append(f"{label} {best:.1f} ({nbytes / best / 1e6:.2f}) err {err:.1e}")
            print(f"{n:>5} x {k:>5}, {rows:>2} rows: " + " | ".join(line), flush=True)
    print(json.dumps(results))
    if bad:
        sys.exit("outputs off the f32 product (their timings mean nothing): " + "; ".join(bad))


if __name__ == "__main__":
    main()
