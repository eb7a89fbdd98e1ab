#!/usr/bin/env bash
# Builds qlab with the `cuda` feature in release on a machine with no GPU and no system CUDA (the toolchain
# comes from PyPI's CUDA 13.0 wheels, ../shared/tools/cuda-toolchain.sh), regenerates the kernels' PTX (nf4.cu, fused.cu, lowrank.cu),
# and leaves stripped, gzipped binaries for a GPU machine: qlab.gz and cuda_reference.gz (the GPU tests).
#   scripts/build-cuda.sh [DEST_DIR]        (default DEST_DIR: /work/main/.dev)
# With a system CUDA (12.x or 13.0) instead: CUDA_COMPUTE_CAP=90 cargo build --release --features cuda
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-/work/main/.dev}
toolchain=${QLAB_CUDA_TOOLCHAIN:-$here/../shared/tools/cuda-toolchain.sh}
[[ -x $toolchain ]] || toolchain=/work/shared/tools/cuda-toolchain.sh
eval "$("$toolchain")"
cd "$here"
nvcc -ptx -arch=compute_80 -fmad=false -o src/model/kernels/cuda/nf4.ptx src/model/kernels/cuda/nf4.cu
nvcc -ptx -arch=compute_80 -fmad=false -o src/model/kernels/cuda/fused.ptx src/model/kernels/cuda/fused.cu
nvcc -ptx -arch=compute_80 -o src/model/kernels/cuda/lowrank.ptx src/model/kernels/cuda/lowrank.cu
cargo build --release --features cuda --bin qlab --test cuda_reference
tests=$(ls -t target/release/deps/cuda_reference-* | grep -v '\.d$' | head -n 1)
mkdir -p "$dest"
strip -o "$dest/qlab" target/release/qlab
strip -o "$dest/cuda_reference" "$tests"
gzip -f -9 "$dest/qlab" "$dest/cuda_reference"
ls -l "$dest"/qlab.gz "$dest"/cuda_reference.gz
