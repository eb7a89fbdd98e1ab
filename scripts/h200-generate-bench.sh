#!/usr/bin/env bash
# Answering on a GPU, qlab against the peer in ONE device call (issue #15), after the CUDA reference tests:
#   qlab bench generate (NF4 base at Llama-3.1-8B dims, random weights, r=16 LoRA unmerged, greedy) and
#   ../shared/bench/peer_generate_gpu.py (transformers generate + PEFT + bitsandbytes NF4), batch 1 and 10,
#   prompt 128, 128 new tokens. Writes $OUT/h200-generate.json and the raw logs.
# Expects, in the working tree (ignored folders the device call carries):
#   .dev/qlab.gz, .dev/cuda_reference.gz   from scripts/build-cuda.sh
#   .dev/peer/peer_generate_gpu.py          a copy of ../shared/bench/peer_generate_gpu.py
#   .whl/bitsandbytes-*.whl                 the peer's missing package (device README, "Notes")
# usage (on the GPU machine): scripts/h200-generate-bench.sh   (OUT defaults to ./out)
set -uo pipefail
out=${OUT:-out}
# shellcheck source=scripts/h200-setup.sh
source "$(dirname "$0")/h200-setup.sh"
QLAB_FIXTURES=tests/fixtures/models /tmp/qlab-bin/cuda_reference --test-threads 1 2>&1 | tail -25 | tee "$out/cuda_reference.txt"
for batch in 1 10; do
  /tmp/qlab-bin/qlab bench generate --preset llama-3.1-8b --random-weights --batch "$batch" --prompt 128 --new 128 \
    --device cuda:0 --repeats 3 --json > "$out/qlab-b$batch.json" 2> "$out/qlab-b$batch.err"
  PYTHONPATH=/tmp/site python3 .dev/peer/peer_generate_gpu.py "$batch" 128 128 > "$out/peer-b$batch.json" 2> "$out/peer-b$batch.err"
  tail -c 600 "$out/qlab-b$batch.json" "$out/peer-b$batch.json"
done
