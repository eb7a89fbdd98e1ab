#!/usr/bin/env bash
# Runs the CPU kernels' own tests again on an emulated CPU without AVX-512 (QEMU's Haswell model: AVX2 + FMA), so
# that a machine with AVX-512 also checks the AVX2 paths against candle's bits (the kernels pick their instruction
# set at run time). Usage: scripts/avx2-under-qemu.sh [TEST FILTER...] (default: the LoRA products, which follow
# gemm's own dispatch and so cannot be sent to AVX2 on a CPU with AVX-512; the other kernels' tests run every
# instruction set the CPU has natively). Needs qemu-user (Debian: apt-get install qemu-user).
set -euo pipefail
cd "$(dirname "$0")/.."
filters=("$@")
[ ${#filters[@]} -gt 0 ] || filters=(lora_delta)
bin=$(cargo test --lib --no-run 2>&1 | sed -n 's/.*Executable unittests src\/lib.rs (\(.*\))/\1/p' | tail -1)
[ -x "$bin" ] || { echo "avx2-under-qemu: no lib test binary found" >&2; exit 1; }
# A test checks that the emulated CPU sends the LoRA products to the 8-lane (AVX2) kernels.
QLAB_EXPECT_GEMM_LANES=8 qemu-x86_64 -cpu Haswell "$bin" lora_delta::tests::the_kernels_take
for filter in "${filters[@]}"; do
  qemu-x86_64 -cpu Haswell "$bin" "$filter"
done
