# NF4 dequantization kernel variants (scripts/nf4_dequant_variants.cu built to PTX) against the committed kernel, on a
# GPU with PyTorch, no Rust build: each variant's output compared bit for bit with base16's, then CUDA-event timings
# (best and median of 5 rounds of 50 launches) at Llama-3.1-8B's weights, stacked as qlab dequantizes them (gate and
# up one under the other with the low-rank tail's 96 columns after each row; q, k, v with 144), blocks of 1024 or 256
# threads. TB/s counts the codes, the absmax codes and the bf16 output.
#   nvcc -ptx -arch=compute_80 -fmad=false -o /tmp/variants.ptx scripts/nf4_dequant_variants.cu
#   python3 scripts/nf4_dequant_bench.py /tmp/variants.ptx
import ctypes, sys, json, os
import torch
cuda = ctypes.CDLL("libcuda.so.1")
torch.zeros(1, device="cuda")
mod = ctypes.c_void_p()
assert cuda.cuModuleLoadData(ctypes.byref(mod), open(sys.argv[1], "rb").read() + b"\0") == 0
fs = {}
def f(name):
    if name not in fs:
        h = ctypes.c_void_p(); assert cuda.cuModuleGetFunction(ctypes.byref(h), mod, name.encode()) == 0, name; fs[name] = h
    return fs[name]
def launch(name, per_thread, threads, codes, absq, tables, start, count, out, cols, ld):
    pairs = count // 2
    n = (pairs // (per_thread // 2) )
    grid = (n + threads - 1) // threads
    args = [ctypes.c_void_p(codes.data_ptr()), ctypes.c_void_p(absq.data_ptr()), ctypes.c_void_p(tables.data_ptr()),
            ctypes.c_uint64(start), ctypes.c_uint64(pairs), ctypes.c_void_p(out.data_ptr()), ctypes.c_uint64(cols), ctypes.c_uint64(ld)]
    arr = (ctypes.c_void_p * len(args))(*[ctypes.cast(ctypes.pointer(a), ctypes.c_void_p) for a in args])
    r = cuda.cuLaunchKernel(f(name), grid, 1, 1, threads, 1, 1, 0, ctypes.c_void_p(torch.cuda.current_stream().cuda_stream), arr, None)
    assert r == 0, r
def weight(rows, cols, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    n = rows * cols
    codes = torch.randint(0, 256, (n // 2,), dtype=torch.uint8, device="cuda", generator=g)
    absq = torch.randint(0, 256, (n // 64,), dtype=torch.uint8, device="cuda", generator=g)
    tables = torch.randn(16 + 256 + 1 + n // 64 // 256 + 1, device="cuda", generator=g)
    return codes, absq, tables
# (label, members [(rows, cols)], ld extra columns)
cases = [("gate+up 2x14336x4096 +96 tail", [(14336, 4096), (14336, 4096)], 96),
         ("down 4096x14336", [(4096, 14336)], 0),
         ("q/o 4096x4096", [(4096, 4096)], 0),
         ("q,k,v 4096+1024+1024 x4096 +144 tail", [(4096, 4096), (1024, 4096), (1024, 4096)], 144)]
variants = [("base16", 16, 1024), ("base16", 16, 256), ("w16", 16, 1024), ("w16s", 16, 1024), ("w32", 32, 1024), ("w32s", 32, 1024), ("w32", 32, 256), ("w32s", 32, 256),
            ("c16", 16, 1024), ("c16", 16, 256), ("c32", 32, 1024), ("c32", 32, 256)]
# QLAB_DQ_VARIANTS="base16/256 c16/256" picks some (name/threads)
if os.environ.get("QLAB_DQ_VARIANTS"):
    wanted = os.environ["QLAB_DQ_VARIANTS"].split()
    variants = [v for v in variants if f"{v[0]}/{v[2]}" in wanted]
res = {}
for label, members, tail in cases:
    cols = members[0][1]; ld = cols + tail; rows = sum(r for r, _ in members)
    ws = [weight(r, c, i) for i, (r, c) in enumerate(members)]
    def run(name, per, threads, out):
        at = 0
        for (r, c), (codes, absq, tables) in zip(members, ws):
            launch(name, per, threads, codes, absq, tables, 0, r * c, out[at * ld:], c, ld)
            at += r
    ref = torch.zeros(rows * ld, dtype=torch.bfloat16, device="cuda")
    run("base16", 16, 1024, ref)
    nbytes = sum(r * c // 2 + r * c * 2 + r * c // 64 for r, c in members)
    for name, per, threads in variants:
        out = torch.full((rows * ld,), 7.0, dtype=torch.bfloat16, device="cuda")
        if tail: out.view(rows, ld)[:, cols:] = 0
        run(name, per, threads, out)
        if tail: ref.view(rows, ld)[:, cols:] = 0
        same = torch.equal(out.view(torch.int16), ref.view(torch.int16))
        ts = []
        for rep in range(5):
            a, b = torch.cuda.Event(True), torch.cuda.Event(True)
            a.record()
            for _ in range(50): run(name, per, threads, out)
            b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b) / 50 * 1000)
        best = min(ts)
        key = f"{name}/{threads}"
        print(f"{label:40s} {key:12s} equal={same} best {best:8.1f} us  median {sorted(ts)[2]:8.1f}  {nbytes/best/1e6:6.2f} TB/s", flush=True)
        res.setdefault(label, {})[key] = {"equal": same, "best_us": round(best, 1), "median_us": round(sorted(ts)[2], 1)}
print(json.dumps(res))
