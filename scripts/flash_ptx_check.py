# The flash attention kernels (src/model/kernels/cuda/flash.ptx) alone, on a GPU with PyTorch, no Rust build:
# loads the PTX through the driver API, checks values, log-sum-exp and gradients against float32 torch (head
# sizes 16-256, lengths off the tiles, grouped heads, windows, soft-caps, both paddings, cached keys, decoding's
# single new query), then times forward and forward + backward against torch's scaled_dot_product_attention at
# Llama-3.1-8B's attention shape (32 query heads, 8 key heads, d = 128) and at d = 256.
#   python3 scripts/flash_ptx_check.py src/model/kernels/cuda/flash.ptx
# (QLAB_FLASH_BENCH_ONLY=1 skips the checks, QLAB_FLASH_NO_SDPA=1 the timing of PyTorch's kernel,
# QLAB_FLASH_SHAPES picks the timed shapes, see the end). The timings are python clocks around a few launches:
# good for kernels of a millisecond, not for the decoding kernel's microseconds (time those under ncu, as
# bench/results/h100-decode-attention-2026-12-07.txt does).
# Shared-memory sizes and grids follow src/model/kernels/cuda/flash.rs; keep the two in step.
import ctypes, math, sys, time, json
import torch

cuda = ctypes.CDLL("libcuda.so.1")
torch.cuda.init()
torch.zeros(1, device="cuda")
ptx = open(sys.argv[1], "rb").read() + b"\0"
mod = ctypes.c_void_p()
assert cuda.cuModuleLoadData(ctypes.byref(mod), ptx) == 0, "load"


class Geometry(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in "qsb qsh qst ksb ksh kst vsb vsh vst".split()] + [
        (n, ctypes.c_int32) for n in "h kvh t T past window".split()] + [("scale", ctypes.c_float), ("softcap", ctypes.c_float)]


funcs = {}


def func(name, smem):
    if name not in funcs:
        f = ctypes.c_void_p()
        assert cuda.cuModuleGetFunction(ctypes.byref(f), mod, name.encode()) == 0, name
        r = cuda.cuFuncSetAttribute(f, 8, smem)
        assert r == 0, ("attr", r)
        funcs[name] = f
    return funcs[name]


def launch(name, grid, smem, args, threads=128):
    f = func(name, max(smem, 48 * 1024))
    holders = []
    for a in args:
        if isinstance(a, torch.Tensor):
            holders.append(ctypes.c_void_p(a.data_ptr()))
        elif isinstance(a, Geometry):
            holders.append(a)
        elif isinstance(a, int):
            holders.append(ctypes.c_int32(a))
        else:
            raise TypeError(a)
    arr = (ctypes.c_void_p * len(holders))(*[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p) for h in holders])
    stream = torch.cuda.current_stream().cuda_stream
    r = cuda.cuLaunchKernel(f, *grid, threads, 1, 1, smem, ctypes.c_void_p(stream), arr, None)
    assert r == 0, (name, r)


# Tile choices per head size, as flash.cu's ENTRIES make them (QLAB_FLASH_TILES="fwd_mt,fwd_tile,bq_mt,bq_tile,kv_rows"
# checks a PTX built with the matching -D FWD_MT=.. -D FWD_TILE=.. -D BQ_MT=.. -D BQ_TILE=.. -D QUERY_TILE_KV=..).
import os
FWD_MT, FWD_TILE, BQ_MT, BQ_TILE, KV_ROWS = (int(x) for x in os.environ.get("QLAB_FLASH_TILES", "2,64,2,32,64").split(","))


def fwd_rows(D): return 64 * (FWD_MT if D <= 128 else 1)
def fwd_tile(D): return FWD_TILE if D <= 128 else 32
def bq_rows(D): return 64 * (BQ_MT if D <= 128 else 1)
def bq_tile(D): return BQ_TILE if D <= 128 else 32


# flash.rs: a single new query (t = 1, decoding) runs flash_decode_d*, DECODE_WARPS warps per (batch, head)
DECODE_WARPS = 8


def flash(q, k, v, valid, past, window, scale, softcap):
    b, h, t, D = q.shape
    kvh, T = k.shape[1], k.shape[2]
    g = Geometry(*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], h, kvh, t, T, past, window, scale, softcap or 0.0)
    out = torch.empty(b, t, h, D, dtype=torch.bfloat16, device="cuda")
    lse = torch.empty(b, h, t, dtype=torch.float32, device="cuda")
    if t == 1:
        launch(f"flash_decode_d{D}", (b * h, 1, 1), DECODE_WARPS * (D + 2) * 4, [q, k, v, valid, out, lse, g],
               threads=32 * DECODE_WARPS)
        return out, lse, g
    rows, bc = fwd_rows(D), fwd_tile(D)
    launch(f"flash_forward_d{D}", (b * h, (t + rows - 1) // rows, 1), (rows + 4 * bc) * (D + 8) * 2, [q, k, v, valid, out, lse, g])
    return out, lse, g


def flash_bwd(q, k, v, valid, out, lse, dout, g, parts=("kv", "q")):
    b, h, t, D = q.shape
    kvh, T = k.shape[1], k.shape[2]
    delta = torch.empty(b, h, t, dtype=torch.float32, device="cuda")
    launch("flash_delta_bf16", ((b * t * h + 3) // 4, 1, 1), 0, [out, dout, delta, b, h, t, D])
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty(b, kvh, T, D, dtype=torch.bfloat16, device="cuda")
    dv = torch.empty_like(dk)
    dc = min(D, 128)
    if "kv" in parts:
      launch(f"flash_backward_kv_d{D}", (b * kvh, (T + 63) // 64, D // dc), (128 + 4 * KV_ROWS) * (D + 8) * 2 + 4 * KV_ROWS * 4,
           [q, k, v, valid, dout, lse, delta, dk, dv, g])
    rows, bc = bq_rows(D), bq_tile(D)
    if "q" in parts:
      launch(f"flash_backward_q_d{D}", (b * h, (t + rows - 1) // rows, 1), (2 * rows + 4 * bc) * (D + 8) * 2,
           [q, k, v, valid, dout, lse, delta, dq, g])
    return dq, dk, dv


def reference(q, k, v, valid, past, window, scale, softcap):
    b, h, t, D = q.shape
    kvh, T = k.shape[1], k.shape[2]
    rep = h // kvh
    kr = k.repeat_interleave(rep, 1)
    vr = v.repeat_interleave(rep, 1)
    s = (q * scale) @ kr.transpose(-1, -2)
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    qa = torch.arange(t, device="cuda")[:, None] + past
    kj = torch.arange(T, device="cuda")[None, :]
    allow = (kj <= qa)
    if window:
        allow = allow & (kj > qa - window)
    allow = allow[None, None] & (valid[:, None, None, :] != 0)
    s = s.masked_fill(~allow, float("-inf"))
    any_ = allow.any(-1, keepdim=True)
    p = torch.softmax(s.masked_fill(~any_, 0.0), -1) * any_
    o = p @ vr
    lse = torch.logsumexp(s, -1)
    return o.transpose(1, 2).contiguous(), lse


def rel(a, b):
    return ((a.float() - b.float()).norm() / (b.float().norm() + 1e-12)).item()


def check(b, h, kvh, t, D, past=0, window=0, softcap=None, pad=None, seed=0):
    torch.manual_seed(seed)
    T = past + t
    q = torch.randn(b, h, t, D, device="cuda").bfloat16()
    k = torch.randn(b, kvh, T, D, device="cuda").bfloat16()
    v = torch.randn(b, kvh, T, D, device="cuda").bfloat16()
    valid = torch.ones(b, T, dtype=torch.uint8, device="cuda")
    if pad == "right":
        valid[-1, T - T // 3:] = 0
    elif pad == "left":
        valid[-1, : T // 3] = 0
    scale = D ** -0.5
    out, lse, g = flash(q, k, v, valid, past, window, scale, softcap)
    qf, kf, vf = (x.float().requires_grad_() for x in (q, k, v))
    ro, rl = reference(qf, kf, vf, valid, past, window, scale, softcap)
    dout = torch.randn_like(ro).bfloat16()
    # gradient of rows of padded queries count: the reference has zero for fully masked rows as well
    (ro * dout.float()).sum().backward()
    dq, dk, dv = flash_bwd(q, k, v, valid, out, lse, dout, g)
    torch.cuda.synchronize()
    fin = torch.isfinite(rl)
    lse_err = (lse[fin] - rl.detach()[fin]).abs().max().item() if fin.any() else 0.0
    lse_inf_ok = bool((torch.isinf(lse) == ~fin).all())
    errs = dict(out=rel(out, ro.detach()), dq=rel(dq, qf.grad), dk=rel(dk, kf.grad), dv=rel(dv, vf.grad))
    ok = all(e < 2e-2 for e in errs.values()) and lse_err < 1e-2 and lse_inf_ok
    print(json.dumps(dict(case=dict(b=b, h=h, kvh=kvh, t=t, D=D, past=past, window=window, softcap=softcap, pad=pad),
                          lse=lse_err, lse_inf_ok=lse_inf_ok, ok=ok, **{k: round(v, 5) for k, v in errs.items()})))
    return ok


if not os.environ.get("QLAB_FLASH_BENCH_ONLY"):
    all_ok = True
    for D in (16, 32, 64, 128, 256):
        all_ok &= check(2, 4, 2, 100, D, pad="right")
        all_ok &= check(2, 4, 1, 77, D, pad="left", softcap=2.0 if D != 16 else 30.0)
        all_ok &= check(1, 4, 2, 130, D, window=37)
        all_ok &= check(2, 2, 2, 65, D, past=20, pad="left", window=50)
    all_ok &= check(1, 8, 2, 1000, 128, pad="right", softcap=50.0, window=300)
    # decoding steps: one new query after cached keys
    for D in (16, 32, 64, 128, 256):
        all_ok &= check(3, 4, 2, 1, D, past=150, pad="left")
        all_ok &= check(2, 4, 1, 1, D, past=99, window=40, softcap=30.0, pad="right")
    all_ok &= check(10, 32, 8, 1, 128, past=1000)
    print("ALL_OK" if all_ok else "FAILED")


def bench(t, D=128, h=32, kvh=8, b=1, reps=3):
    q = torch.randn(b, h, t, D, device="cuda").bfloat16()
    k = torch.randn(b, kvh, t, D, device="cuda").bfloat16()
    v = torch.randn(b, kvh, t, D, device="cuda").bfloat16()
    valid = torch.ones(b, t, dtype=torch.uint8, device="cuda")
    dout = torch.randn(b, t, h, D, device="cuda").bfloat16()
    scale = D ** -0.5

    def ours():
        out, lse, g = flash(q, k, v, valid, 0, 0, scale, None)
        flash_bwd(q, k, v, valid, out, lse, dout, g)

    qt, kt, vt = (x.detach().clone().requires_grad_() for x in (q, k, v))

    def sdpa():
        o = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True)
        o.backward(dout.transpose(1, 2))

    def ours_fwd():
        flash(q, k, v, valid, 0, 0, scale, None)

    def sdpa_fwd():
        with torch.no_grad():
            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    fo, fl, fg = flash(q, k, v, valid, 0, 0, scale, None)

    def ours_kv():
        flash_bwd(q, k, v, valid, fo, fl, dout, fg, parts=("kv",))

    def ours_q():
        flash_bwd(q, k, v, valid, fo, fl, dout, fg, parts=("q",))

    res = {}
    runs = [("qlab", ours), ("qlab_fwd", ours_fwd), ("qlab_bwd_kv", ours_kv), ("qlab_bwd_q", ours_q)]
    if not os.environ.get("QLAB_FLASH_NO_SDPA"):
        runs += [("sdpa", sdpa), ("sdpa_fwd", sdpa_fwd)]
    for name, fn in runs:
        fn(); torch.cuda.synchronize()
        t0 = time.time()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        dt = (time.time() - t0) / reps
        # causal: forward 2 products, forward + backward 7 (counted as 3.5 forwards), the keys' gradient 4 of
        # them (S, dP, dV, dK), the queries' 3 (S, dP, dQ)
        per = {"qlab_fwd": 1, "sdpa_fwd": 1, "qlab_bwd_kv": 2, "qlab_bwd_q": 1.5}.get(name, 3.5)
        flops = 4 * b * h * t * t * D / 2 * per
        res[name] = dict(ms=round(dt * 1e3, 2), tflops=round(flops / dt / 1e12, 1))
    print(json.dumps(dict(bench=dict(t=t, D=D, h=h, kvh=kvh, b=b), **res)))


# QLAB_FLASH_SHAPES="T[xB[xD]],..." times only those shapes (d = 256 with 16 query heads, otherwise 32)
shapes = os.environ.get("QLAB_FLASH_SHAPES", "2048x2,2048,8192,16384,4096x1x256")
for shape in shapes.split(","):
    parts = shape.split("x")
    t, b, D = (int(x) for x in parts + ["1", "128"][len(parts) - 1:])
    bench(t, D=D, h=16 if D == 256 else 32, kvh=8, b=b)
