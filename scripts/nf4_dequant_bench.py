# NF4 dequantization kernel variants (scripts/nf4_dequant_variants.cu built to PTX, which includes nf4.cu) against the
# committed kernel nf4_dequant16_bf16 ("base16"), on a GPU with PyTorch, no Rust build: each variant's output compared
# bit for bit with base16's (the script fails at the end if any differs), then CUDA-event timings (best and median of 5
# rounds of 50) at Llama-3.1-8B's weights, stacked as qlab dequantizes them (gate and up one under the other with the
# low-rank tail's 96 columns after each row; q, k, v with 144), blocks of 1024 or 256 threads. Each launch's arguments
# are built once, outside the timed rounds. TB/s counts the codes, the absmax codes and the bf16 output.
#   nvcc -ptx -arch=compute_80 -fmad=false -o /tmp/variants.ptx scripts/nf4_dequant_variants.cu
#   python3 scripts/nf4_dequant_bench.py /tmp/variants.ptx
# QLAB_DQ_VARIANTS="base16/256 c16/256" times some of them (label/threads).
import ctypes
import json
import os
import sys

import torch

cuda = ctypes.CDLL("libcuda.so.1")
torch.zeros(1, device="cuda")
module = ctypes.c_void_p()
assert cuda.cuModuleLoadData(ctypes.byref(module), open(sys.argv[1], "rb").read() + b"\0") == 0, "load"
KERNELS = {"base16": "nf4_dequant16_bf16"}
# (label, elements a thread, threads a block)
VARIANTS = [("base16", 16, 1024), ("base16", 16, 256), ("w16", 16, 1024), ("w16s", 16, 1024), ("w32", 32, 1024),
            ("w32s", 32, 1024), ("w32", 32, 256), ("w32s", 32, 256), ("c16", 16, 1024), ("c16", 16, 256),
            ("c32", 32, 1024), ("c32", 32, 256)]
# (label, members [(rows, cols)], the low-rank tail's columns after each row)
CASES = [("gate+up 2x14336x4096 +96 tail", [(14336, 4096), (14336, 4096)], 96),
         ("down 4096x14336", [(4096, 14336)], 0),
         ("q/o 4096x4096", [(4096, 4096)], 0),
         ("q,k,v 4096+1024+1024 x4096 +144 tail", [(4096, 4096), (1024, 4096), (1024, 4096)], 144)]


def function(label):
    f = ctypes.c_void_p()
    name = KERNELS.get(label, label)
    assert cuda.cuModuleGetFunction(ctypes.byref(f), module, name.encode()) == 0, name
    return f


def weight(rows, cols, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    n = rows * cols
    codes = torch.randint(0, 256, (n // 2,), dtype=torch.uint8, device="cuda", generator=g)
    absmax_q = torch.randint(0, 256, (n // 64,), dtype=torch.uint8, device="cuda", generator=g)
    tables = torch.randn(16 + 256 + 1 + n // 64 // 256 + 1, device="cuda", generator=g)
    return codes, absmax_q, tables


def launches(label, per_thread, threads, members, weights, out, ld):
    """One member after another into `out` (rows ld apart): each launch's function, grid and packed arguments."""
    f, made, at = function(label), [], 0
    for (rows, cols), (codes, absmax_q, tables) in zip(members, weights):
        pairs = rows * cols // 2
        grid = (pairs // (per_thread // 2) + threads - 1) // threads
        args = [ctypes.c_void_p(codes.data_ptr()), ctypes.c_void_p(absmax_q.data_ptr()),
                ctypes.c_void_p(tables.data_ptr()), ctypes.c_uint64(0), ctypes.c_uint64(pairs),
                ctypes.c_void_p(out.data_ptr() + 2 * at * ld), ctypes.c_uint64(cols), ctypes.c_uint64(ld)]
        packed = (ctypes.c_void_p * len(args))(*[ctypes.cast(ctypes.pointer(a), ctypes.c_void_p) for a in args])
        made.append((f, grid, threads, packed, args))
        at += rows
    return made


def run(made):
    stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
    for f, grid, threads, packed, _ in made:
        assert cuda.cuLaunchKernel(f, grid, 1, 1, threads, 1, 1, 0, stream, packed, None) == 0


def main():
    variants = VARIANTS
    if os.environ.get("QLAB_DQ_VARIANTS"):
        wanted = os.environ["QLAB_DQ_VARIANTS"].split()
        variants = [v for v in VARIANTS if f"{v[0]}/{v[2]}" in wanted]
    results = {}
    for label, members, tail in CASES:
        cols = members[0][1]
        ld, rows = cols + tail, sum(r for r, _ in members)
        weights = [weight(r, c, i) for i, (r, c) in enumerate(members)]
        nbytes = sum(r * c // 2 + r * c * 2 + r * c // 64 for r, c in members)
        # The tail's columns stay zero in both: only the weight's are written.
        reference = torch.zeros(rows * ld, dtype=torch.bfloat16, device="cuda")
        run(launches("base16", 16, 1024, members, weights, reference, ld))
        for name, per_thread, threads in variants:
            out = torch.full((rows, ld), 7.0, dtype=torch.bfloat16, device="cuda")
            out[:, cols:] = 0
            made = launches(name, per_thread, threads, members, weights, out, ld)
            run(made)
            equal = torch.equal(out.flatten().view(torch.int16), reference.view(torch.int16))
            times = []
            for _ in range(5):
                start, end = torch.cuda.Event(True), torch.cuda.Event(True)
                start.record()
                for _ in range(50):
                    run(made)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 50 * 1000)
            best, median = min(times), sorted(times)[2]
            key = f"{name}/{threads}"
            print(f"{label:40s} {key:12s} equal={equal} best {best:8.1f} us  median {median:8.1f}  "
                  f"{nbytes / best / 1e6:6.2f} TB/s", flush=True)
            results.setdefault(label, {})[key] = {"equal": equal, "best_us": round(best, 1),
                                                  "median_us": round(median, 1)}
    print(json.dumps(results))
    unequal = [f"{label}: {key}" for label, by in results.items() for key, r in by.items() if not r["equal"]]
    if unequal:
        sys.exit("outputs unlike the committed kernel's (their timings mean nothing): " + ", ".join(unequal))


if __name__ == "__main__":
    main()
