#!/usr/bin/env bash
# On a GPU machine: builds packed by scripts/pack-builds.sh, compared on one machine in one call. The CUDA tests of
# CANDIDATE, then training steps at Llama-3.1-8B dims (random NF4 weights, r = 16, batch 2 x 2048) alternating BASE and
# CANDIDATE ROUNDS times, and the peer (HF transformers + PEFT + bitsandbytes NF4) once in the same call:
#   ARCHIVE=builds.tar.xz BASE=main CANDIDATE=v1 [ROUNDS=2] scripts/gpu-ab-bench.sh
# Every run is a line of $OUT/train.jsonl (scripts/h200_record.py; the build's name in "commit"), the tests' output
# $OUT/tests-CANDIDATE.txt. A candidate whose tests fail is not timed. Expects what scripts/h200-train-bench.sh does:
# .dev/peer/peer_qlora_gpu.py and .whl/bitsandbytes-*.whl in the working tree.
set -uo pipefail
out=${OUT:-out}
: "${ARCHIVE:?ARCHIVE=builds.tar.xz}"
base=${BASE:?BASE=name} candidate=${CANDIDATE:?CANDIDATE=name}
bin=/tmp/qlab-bin
# shellcheck source=scripts/h200-setup.sh
source "$(dirname "$0")/h200-setup.sh"
mkdir -p /tmp/qlab-logs
QLAB_FIXTURES=tests/fixtures/models "$bin/tests-$candidate" --test-threads 1 > "$out/tests-$candidate.txt" 2>&1
status=$?
grep -E "^test result|panicked" "$out/tests-$candidate.txt" | tail -5
if [[ $status != 0 ]]; then echo "tests of $candidate failed (exit $status): not timed"; exit 1; fi

# step NAME: one 2 x 2048 run of build NAME, or of the peer
step() {
  local name=$1 log=/tmp/qlab-logs/ab-$1 side=qlab
  if [[ $name == peer ]]; then
    side=peer
    PYTHONPATH=/tmp/site timeout 200 python3 .dev/peer/peer_qlora_gpu.py nf4 2 2048 > "$log.json" 2> "$log.err"
  else
    timeout 200 "$bin/qlab-$name" bench train --preset llama-3.1-8b --random-weights --batch 2 --seq 2048 --steps 6 \
      --device cuda:0 --json > "$log.json" 2> "$log.err"
  fi
  python3 "$(dirname "$0")/h200_record.py" "$out/train.jsonl" "$side" $? "$log" "$name" batch=2 seq=2048
}
for _ in $(seq "${ROUNDS:-2}"); do step "$base"; step "$candidate"; done
step peer
