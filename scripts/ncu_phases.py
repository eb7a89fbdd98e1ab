#!/usr/bin/env python3
"""Where one training step's GPU time goes, by phase, from an Nsight Compute CSV of `qlab bench train ... --steps 2`
(ncu --metrics gpu__time_duration.sum --csv --print-summary none; plain, .gz or .xz).

The step is the launches after the first step's AdamW update up to the last one. Phases, from the kernels' names:
  fwd blocks   up to the final RMSNorm: the first after the last gated product before the first vocabulary
               loss (row_nll);
  head+loss    from there to the first RMSNorm after the loss's last launch (the last block's recomputation
               starts with it, with or without its attention half; the few launches just before it, the index
               select and the adapters' stacking, count here);
  bwd blocks   the rest: recomputation, backward and the update.
Each phase lists its kernels' summed durations, the longest first. Then the blocks' launches grouped by what they
do, per block (the profiled blocks' sum divided by LAYERS, default 2), with what runs once a step apart, and the
sum for a step of 32 blocks.
    python3 scripts/ncu_phases.py ncu.csv.xz [TOP]        (TOP kernels per phase, default 25; LAYERS in the environment)
"""
import collections
import csv
import gzip
import lzma
import os
import sys

UNITS = {"ns": 1e-6, "nsecond": 1e-6, "us": 1e-3, "usecond": 1e-3, "ms": 1.0, "msecond": 1.0}


def launches(path):
    """(kernel name, ms) for every launch in the CSV, in order."""
    opener = lzma.open if path.endswith(".xz") else gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        rows = [r for r in csv.reader(f) if len(r) > 10]
    if not rows or "Kernel Name" not in rows[0]:
        sys.exit(f"{path}: no ncu CSV header (run ncu with --csv --print-summary none)")
    head = rows[0]
    name, value, unit = (head.index(k) for k in ("Kernel Name", "Metric Value", "Metric Unit"))
    out = []
    for r in rows[1:]:
        try:
            v = float(r[value].replace(",", "")) * UNITS[r[unit]]
        except (ValueError, KeyError):
            continue
        out.append((r[name].split("(")[0][:70], v))
    return out


def phases(ks):
    """The last step's launches split into (phase, launches)."""
    ends = [i for i, (n, _) in enumerate(ks) if "adamw" in n]
    if len(ends) < 2:
        sys.exit("fewer than two AdamW updates in the CSV: profile two steps (--steps 2)")
    step = ks[ends[-2] + 1 : ends[-1] + 1]
    first_nll = next((i for i, (n, _) in enumerate(step) if n.startswith("row_nll_bf16")), len(step))
    gated = [i for i, (n, _) in enumerate(step[:first_nll]) if n.startswith("gated_bf16")]
    after = gated[-1] if gated else 0
    head = next((i for i, (n, _) in enumerate(step[:first_nll]) if i > after and n.startswith("rms_norm_bf16")), after)
    last_nll = max((i for i, (n, _) in enumerate(step) if n.startswith("row_nll")), default=first_nll)
    bwd = next((i for i, (n, _) in enumerate(step) if i > last_nll and n.startswith("rms_norm_bf16")), len(step))
    return step, [("fwd blocks", step[:head]), ("head+loss", step[head:bwd]), ("bwd blocks", step[bwd:])]


def summary(title, seg, top):
    totals = collections.defaultdict(lambda: [0.0, 0])
    for n, v in seg:
        totals[n][0] += v
        totals[n][1] += 1
    print("# %s %.3f ms, %d kernels" % (title, sum(v for _, v in seg), len(seg)))
    for n, (v, c) in sorted(totals.items(), key=lambda x: -x[1][0])[:top]:
        print("  %8.3f ms x%-4d %s" % (v, c, n))


# What a kernel does, from its name: the first pattern it contains; cuBLAS's kernels by their duration.
KINDS = [("flash", "flash attention"), ("nf4", "NF4 dequantization"), ("gated", "gated activation and its backward"),
         ("rms_norm", "RMSNorm and its backward"), ("rope", "rotary embedding"), ("stack_parts", "adapters' stacking"),
         ("fold", "folds of the rank-wide parts"), ("copy", "copies")]
# Launched once a step, not once a block: the index selects at the loss, clipping and AdamW.
ONCE = ("is_u32", "mt_", "fast_sum_small")


def kind(name, ms):
    if name.startswith("nvjet") or "splitKreduce" in name:
        return "frozen products (cuBLAS, over 0.1 ms)" if ms > 0.1 else "adapters' rank-wide products (cuBLAS, under 0.1 ms)"
    return next((k for pattern, k in KINDS if pattern in name), "casts and sums")


def per_block(parts, layers):
    """The forward and backward blocks' launches grouped by kind, per block, and the step's total for 32 blocks."""
    by = {}
    once = head = 0.0
    for title, seg in parts:
        if title == "head+loss":
            head = sum(v for _, v in seg)
            continue
        totals = collections.defaultdict(float)
        for n, v in seg:
            if any(o in n for o in ONCE):
                once += v
            else:
                totals[kind(n, v)] += v
        by[title] = totals
    fwd, bwd = by["fwd blocks"], by["bwd blocks"]
    rows = sorted(set(fwd) | set(bwd), key=lambda k: -(fwd.get(k, 0) + bwd.get(k, 0)))
    table = [(k, fwd.get(k, 0) / layers, bwd.get(k, 0) / layers) for k in rows]
    table.append(("all", sum(r[1] for r in table), sum(r[2] for r in table)))
    print("# per block, by what the kernels do (ms)              forward  backward      both")
    for k, f, b in table:
        print("  %-52s %8.3f %9.3f %9.3f" % (k, f, b, f + b))
    print("# once a step: head and loss %.2f ms; the index selects, clipping and AdamW %.2f ms" % (head, once))
    print("# 32 blocks and what runs once: %.1f ms" % (32 * (table[-1][1] + table[-1][2]) + head + once))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    step, parts = phases(launches(sys.argv[1]))
    print("kernels in the step:", len(step))
    for title, seg in parts:
        summary(title, seg, top)
    summary("step", step, top)
    per_block(parts, int(os.environ.get("LAYERS", "2")))


if __name__ == "__main__":
    main()
