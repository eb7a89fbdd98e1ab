#!/usr/bin/env bash
# Runs the model's unit tests again on an emulated CPU without AVX-512 (QEMU's Haswell model: AVX2 + FMA), so that a
# machine with AVX-512 also checks what an AVX2-only machine runs: the kernels pick their instruction set at run
# time, and there every choice falls to AVX2 by detection, as on such a machine (the LoRA products follow gemm's
# own dispatch, which cannot be sent to AVX2 on a CPU with AVX-512 at all; the training products fall back to f32).
# The default filter, `model::` (about 105 tests, two minutes here), includes the kernels' bit-for-bit tests against
# candle and the demo model's greedy answers token for token against candle's; then, without a filter, the
# reference tests against PEFT's fixtures (tests/model_reference.rs, a few seconds). Usage: scripts/avx2-under-qemu.sh
# [TEST FILTER...]. Needs qemu-user (Debian: apt-get install qemu-user).
set -euo pipefail
cd "$(dirname "$0")/.."
filters=("$@")
[ ${#filters[@]} -gt 0 ] || filters=(model::)
# Haswell without the few system features QEMU's TCG does not emulate (each would print a warning per thread).
cpu=Haswell,-invpcid,-rtm,-hle,-pcid,-x2apic,-tsc-deadline
bin=$(cargo test --lib --no-run 2>&1 | sed -n 's/.*Executable unittests src\/lib.rs (\(.*\))/\1/p' | tail -1)
[ -x "$bin" ] || { echo "avx2-under-qemu: no lib test binary found" >&2; exit 1; }
# A test checks that the emulated CPU sends the LoRA products to the 8-lane (AVX2) kernels.
QLAB_EXPECT_GEMM_LANES=8 qemu-x86_64 -cpu "$cpu" "$bin" lora_delta::tests::the_kernels_take
for filter in "${filters[@]}"; do
  qemu-x86_64 -cpu "$cpu" "$bin" "$filter"
done
# The five families' logits, loss and LoRA gradients against PEFT's fixtures (f32 products there), in process.
if [ $# -eq 0 ]; then
  reference=$(cargo test --test model_reference --no-run 2>&1 | sed -n 's/.*Executable tests\/model_reference.rs (\(.*\))/\1/p' | tail -1)
  [ -x "$reference" ] || { echo "avx2-under-qemu: no model_reference test binary found" >&2; exit 1; }
  qemu-x86_64 -cpu "$cpu" "$reference"
fi
