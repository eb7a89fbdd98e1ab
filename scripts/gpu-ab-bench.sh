#!/usr/bin/env bash
# On a GPU machine: builds packed by scripts/pack-builds.sh, compared on one machine in one call. The CUDA tests of
# each CANDIDATE, then training steps at Llama-3.1-8B dims (random NF4 weights, r = 16, batch 2 x 2048) alternating BASE
# and the CANDIDATES ROUNDS times, and the peer (HF transformers + PEFT + bitsandbytes NF4) once in the same call:
#   ARCHIVE=builds.tar.xz BASE=main CANDIDATE="v1 [v2 ...]" [ROUNDS=2] scripts/gpu-ab-bench.sh
# Every run is a line of $OUT/train.jsonl (scripts/h200_record.py; the build's name in "commit"), each candidate's tests'
# output $OUT/tests-NAME.txt. A candidate whose tests fail is not timed (nor is anything when none passes). Expects what
# scripts/h200-train-bench.sh does: .dev/peer/peer_qlora_gpu.py and .whl/bitsandbytes-*.whl in the working tree.
set -uo pipefail
out=${OUT:-out}
: "${ARCHIVE:?ARCHIVE=builds.tar.xz}"
base=${BASE:?BASE=name}
bin=/tmp/qlab-bin
# shellcheck source=scripts/h200-setup.sh
source "$(dirname "$0")/h200-setup.sh"
passed=()
for candidate in ${CANDIDATE:?CANDIDATE=name}; do
  QLAB_FIXTURES=tests/fixtures/models "$bin/tests-$candidate" --test-threads 1 > "$out/tests-$candidate.txt" 2>&1
  status=$?
  grep -E "^test result|panicked" "$out/tests-$candidate.txt" | tail -5
  if [[ $status == 0 ]]; then passed+=("$candidate"); else echo "tests of $candidate failed (exit $status): not timed"; fi
done
[[ ${#passed[@]} -gt 0 ]] || exit 1

# step NAME: one 2 x 2048 run of build NAME, or of the peer (8 steps, as its script runs them), labelled NAME
step() {
  if [[ $1 == peer ]]; then
    commit=peer bench_run "$out/train.jsonl" peer 2 2048 8 200
  else
    qlab_bin=$bin/qlab-$1 commit=$1 bench_run "$out/train.jsonl" qlab 2 2048 6 200
  fi
}
for _ in $(seq "${ROUNDS:-2}"); do
  step "$base"
  for candidate in "${passed[@]}"; do step "$candidate"; done
done
step peer
