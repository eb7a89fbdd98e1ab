#!/usr/bin/env bash
# Answering on a GPU, qlab against the peer in ONE device call (issue #15), after the CUDA reference tests:
#   qlab bench generate (NF4 base at Llama-3.1-8B dims, random weights, r=16 LoRA unmerged, greedy) and
#   ../shared/bench/peer_generate_gpu.py (transformers generate + PEFT + bitsandbytes NF4), batch 1 and 10,
#   prompt 128, 128 new tokens; and qlab's base alone (--adapter-rank 0) at batch 10, a question set's
#   answers before fine-tuning (the stages after it answer with an adapter, as the r=16 runs do).
# Every run's JSON (or its failure, with the end of its error output) is a line of $OUT/generate.jsonl, and a
# summary line on standard output; the CUDA tests' summary is $OUT/cuda_reference.txt.
# Expects, in the working tree (ignored folders the device call carries):
#   .dev/qlab.gz, .dev/cuda_reference.gz   from scripts/build-cuda.sh
#   .dev/peer/peer_generate_gpu.py          a copy of ../shared/bench/peer_generate_gpu.py
#   .whl/bitsandbytes-*.whl                 the peer's missing package, from scripts/peer-wheel.py
# usage (on the GPU machine): scripts/h200-generate-bench.sh   (OUT defaults to ./out)
set -uo pipefail
out=${OUT:-out}
# shellcheck source=scripts/h200-setup.sh
source "$(dirname "$0")/h200-setup.sh"
commit=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
QLAB_FIXTURES=tests/fixtures/models /tmp/qlab-bin/cuda_reference --test-threads 1 2>&1 | tail -25 | tee "$out/cuda_reference.txt"

# record SIDE BATCH RANK EXIT LOG: one line of $out/generate.jsonl
record() {
  python3 "$(dirname "$0")/h200_record.py" "$out/generate.jsonl" "$1" "$4" "$5" "$commit" batch="$2" adapter_rank="$3"
}

mkdir -p /tmp/qlab-logs
# qlab_run BATCH RANK, peer_run BATCH: one run of each side
qlab_run() {
  local log=/tmp/qlab-logs/qlab-b$1-r$2
  /tmp/qlab-bin/qlab bench generate --preset llama-3.1-8b --random-weights --batch "$1" --adapter-rank "$2" \
    --prompt 128 --new 128 --device cuda:0 --repeats 3 --json > "$log.json" 2> "$log.err"
  record qlab "$1" "$2" $? "$log"
}
peer_run() {
  local log=/tmp/qlab-logs/peer-b$1
  PYTHONPATH=/tmp/site python3 .dev/peer/peer_generate_gpu.py "$1" 128 128 > "$log.json" 2> "$log.err"
  record peer "$1" 16 $? "$log"
}
# qlab's runs first (seconds each), then the peer's (about two minutes each, mostly building its model):
# batch 10 before batch 1, so that a call cut short still pairs the question-set batch.
qlab_run 1 16
qlab_run 10 16
qlab_run 10 0
peer_run 10
peer_run 1
