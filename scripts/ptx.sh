#!/usr/bin/env bash
# The committed PTX of the CUDA kernels (src/model/kernels/cuda/*.ptx) is generated from their .cu sources:
#   scripts/ptx.sh build   regenerate every .ptx from its .cu (needs nvcc on PATH)
#   scripts/ptx.sh check   regenerate into a temporary folder and fail if any committed .ptx differs
#                          (CI runs this; without nvcc it says so and passes, as nothing can be checked)
# One table of flags, used by both, so the check compiles exactly as the build did.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=src/model/kernels/cuda
# kernel : extra nvcc flags (fmad off where the reference tests compare with the CPU bit for bit)
kernels=("nf4:-fmad=false" "fused:-fmad=false" "lowrank:" "flash:")
mode=${1:-}
if ! command -v nvcc >/dev/null 2>&1; then
  if [[ $mode == check ]]; then
    echo "ptx check SKIPPED: nvcc is not on PATH (eval \"\$(../shared/tools/cuda-toolchain.sh)\" provides one)"
    exit 0
  fi
  echo "nvcc is not on PATH" >&2
  exit 1
fi
case $mode in
  build) out=$dir ;;
  check) out=$(mktemp -d); trap 'rm -rf "$out"' EXIT ;;
  *) echo "usage: scripts/ptx.sh build|check" >&2; exit 2 ;;
esac
status=0
for entry in "${kernels[@]}"; do
  name=${entry%%:*}
  flags=${entry#*:}
  # shellcheck disable=SC2086
  nvcc -ptx -arch=compute_80 $flags -o "$out/$name.ptx" "$dir/$name.cu"
  if [[ $mode == check ]] && ! cmp -s "$out/$name.ptx" "$dir/$name.ptx"; then
    echo "$dir/$name.ptx does not match $dir/$name.cu: run scripts/ptx.sh build and commit it" >&2
    status=1
  fi
done
[[ $mode == check && $status == 0 ]] && echo "ptx check: ${#kernels[@]} kernels match their sources"
exit $status
