#!/usr/bin/env bash
# Training on a GPU, qlab against the peer (HF transformers + PEFT + bitsandbytes NF4, ../shared/bench/
# peer_qlora_gpu.py) at Llama-3.1-8B dims with random weights, each side's runs in ONE device call (issue #15):
#   scripts/h200-train-bench.sh train      the CUDA reference tests, then batch 2 x 2048, 1 x 8192 and
#                                          1 x 16384, qlab then the peer at each shape
#   scripts/h200-train-bench.sh presets    qlab alone on small models, for a user with a small card: the demo
#                                          (smollm2-135m, batch 4 x 256 as the demo sweep trains it, without
#                                          checkpointing as experiments.toml sets it) and Mistral-7B v0.3 at
#                                          batch 1 x 2048 (NF4, checkpointed)
#   scripts/h200-train-bench.sh offload    what keeping the blocks' inputs in host memory costs: qlab at
#                                          1 x 16384 with --checkpoints device, then host (reported as
#                                          checkpoints_on_host)
#   scripts/h200-train-bench.sh short      the CUDA reference tests, then batch 2 x 2048 and 1 x 8192, qlab then
#                                          the peer at each shape (train without 1 x 16384, for a short call)
#   scripts/h200-train-bench.sh recompute  qlab with --recompute-attention (each block's attention half recomputed
#                                          in the backward, not kept in host memory as by default) at SHAPES
#                                          (default "2x2048 1x8192 1x16384"), beside a train call's runs
#   scripts/h200-train-bench.sh power      whether a side's 2 x 2048 step is held back by the card's power limit:
#                                          qlab (12 steps), then the peer (8), each with nvidia-smi sampling the SM
#                                          clock, power and throttle reasons every 100 ms ($OUT/power-SIDE.csv),
#                                          summarised over the samples above 400 W (the steps)
#   scripts/h200-train-bench.sh chunks     the vocabulary loss's chunk at batch 2 x 2048: qlab with
#                                          --loss-chunk 1024, 512 and 256, then the peer once
#   scripts/h200-train-bench.sh profile    where a step's GPU time goes: qlab at 2 x 2048 (Llama-3.1-8B dims, the first
#                                          LAYERS blocks, default 2) under Nsight Compute, each kernel's summed duration
#                                          ($OUT/profile.txt, as bench/results/h200-profile-2layers.txt)
#   scripts/h200-train-bench.sh phases     the same step's launches in order ($OUT/ncu.csv.xz) split by phase (forward
#                                          blocks, head and loss, backward blocks) with scripts/ncu_phases.py
#                                          ($OUT/phases.txt; bench/results/h100-profile-final-2026-12-07.txt groups
#                                          one by what the kernels do)
#   scripts/h200-train-bench.sh scaling    whether the 2 x 2048 step waits on the host: qlab alone at Llama-3.1-8B dims,
#                                          sequence 2048, batch 1, 2 and 4 (the same kernels launched, the device's
#                                          work doubling each time), then batch 2 with CUDA_LAUNCH_BLOCKING=1 (its own
#                                          file, scaling-blocking.jsonl); a step that
#                                          barely shrinks at batch 1 is bound by the host's launching
#   scripts/h200-train-bench.sh longest    the longest sequence each side trains at batch 1: doubling from
#                                          START (default 32768) until a run fails, then one bisection
#                                          between the last length that ran and the first that failed; one
#                                          step per run, each side (qlab --steps 1; the peer's script with
#                                          its 8 steps cut to 1). SIDES (default "peer qlab"), LIMIT_S
#                                          (seconds per run, default 200) and MAX (the longest length to try;
#                                          reaching it ends the side without a bisection) bound it.
# In train and short, SHAPES picks the shapes (say "2x2048") and TESTS=0 skips the CUDA reference tests.
# Every run's JSON (or its failure, with the end of its error output) is a line of $OUT/train.jsonl or
# $OUT/longest.jsonl, and a summary line on standard output.
# Expects, in the working tree (ignored folders the device call carries):
#   .dev/qlab.gz, .dev/cuda_reference.gz   from scripts/build-cuda.sh
#   .dev/peer/peer_qlora_gpu.py             a copy of ../shared/bench/peer_qlora_gpu.py
#   .whl/bitsandbytes-*.whl                 the peer's missing package, from scripts/peer-wheel.py
set -uo pipefail
mode=${1:?usage: scripts/h200-train-bench.sh train|short|presets|offload|recompute|power|chunks|profile|phases|scaling|longest}
out=${OUT:-out}
# shellcheck source=scripts/h200-setup.sh
source "$(dirname "$0")/h200-setup.sh"
commit=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}

# ncu_step ARGS...: Nsight Compute over two steps of qlab at 2 x 2048 (the first is the warm-up), the first LAYERS
# blocks (default 2), each kernel's duration, the clocks left alone as the device's METHOD.md asks and the caches
# kept between kernels (flushing them overweights the small ones); ARGS pick the report, which goes to standard output
ncu_step() {
  local ncu
  ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
  timeout 300 "$ncu" --clock-control none --cache-control none --metrics gpu__time_duration.sum "$@" \
    /tmp/qlab-bin/qlab bench train --preset llama-3.1-8b --random-weights --layers "${LAYERS:-2}" --batch 2 \
    --seq 2048 --steps 2 --device cuda:0 --json
}

case $mode in
  train|short)
    if [[ ${TESTS:-1} == 1 ]]; then
      QLAB_FIXTURES=tests/fixtures/models /tmp/qlab-bin/cuda_reference --test-threads 1 2>&1 | tail -30 \
        | tee "$out/cuda_reference.txt"
    fi
    shapes="2x2048 1x8192"
    if [[ $mode == train ]]; then shapes="$shapes 1x16384"; fi
    for shape in ${SHAPES:-$shapes}; do
      bench_run "$out/train.jsonl" qlab "${shape%x*}" "${shape#*x}" 6 150
      bench_run "$out/train.jsonl" peer "${shape%x*}" "${shape#*x}" 8 150
    done
    ;;
  presets)
    bench_run "$out/presets.jsonl" qlab 4 256 8 120 smollm2-135m --no-checkpointing
    bench_run "$out/presets.jsonl" qlab 1 2048 6 150 mistral-7b-v0.3
    ;;
  offload)
    bench_run "$out/offload.jsonl" qlab 1 16384 4 150 llama-3.1-8b --checkpoints device
    bench_run "$out/offload.jsonl" qlab 1 16384 4 150 llama-3.1-8b --checkpoints host
    ;;
  recompute)
    for shape in ${SHAPES:-2x2048 1x8192 1x16384}; do
      bench_run "$out/recompute.jsonl" qlab "${shape%x*}" "${shape#*x}" 6 150 llama-3.1-8b --recompute-attention
    done
    ;;
  power)
    for side in qlab peer; do
      nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.active --format=csv,noheader \
        -lms 100 > "$out/power-$side.csv" &
      sampler=$!
      if [[ $side == qlab ]]; then steps=12; else steps=8; fi
      bench_run "$out/power.jsonl" "$side" 2 2048 "$steps" 200
      kill "$sampler"
      python3 "$(dirname "$0")/power_summary.py" "$out/power-$side.csv" 400 | sed "s/^/$side: /"
    done
    ;;
  chunks)
    for chunk in 1024 512 256; do
      bench_run "$out/chunks.jsonl" qlab 2 2048 6 150 llama-3.1-8b --loss-chunk "$chunk"
    done
    bench_run "$out/chunks.jsonl" peer 2 2048 8 150
    ;;
  profile)
    ncu_step --print-summary per-kernel > "$out/profile.txt" 2>&1
    echo "profile: exit $?, $(wc -l < "$out/profile.txt") lines in $out/profile.txt"
    ;;
  phases)
    ncu_step --csv --print-summary none > "$out/ncu.csv" 2> "$out/ncu.err"
    echo "phases: ncu exit $?"
    python3 "$(dirname "$0")/ncu_phases.py" "$out/ncu.csv" | tee "$out/phases.txt"
    xz -6 "$out/ncu.csv"
    ;;
  scaling)
    for batch in 1 2 4; do bench_run "$out/scaling.jsonl" qlab "$batch" 2048 6 150; done
    CUDA_LAUNCH_BLOCKING=1 bench_run "$out/scaling-blocking.jsonl" qlab 2 2048 4 150 llama-3.1-8b
    ;;
  longest)
    for side in ${SIDES:-peer qlab}; do
      steps=1 good=0 seq=${START:-32768}
      while bench_run "$out/longest.jsonl" "$side" 1 "$seq" "$steps" "${LIMIT_S:-200}"; do
        good=$seq seq=$((seq * 2))
        if ((seq > ${MAX:-1073741824})); then break; fi
      done
      if ((good > 0 && seq <= ${MAX:-1073741824})); then
        bench_run "$out/longest.jsonl" "$side" 1 $(((good + seq) / 2)) "$steps" "${LIMIT_S:-200}"
      fi
    done
    ;;
  *) echo "unknown mode $mode (train|short|presets|offload|recompute|power|chunks|profile|phases|scaling|longest)" >&2; exit 2 ;;
esac
