#!/usr/bin/env bash
# Builds qlab with the `cuda` feature in release on a machine with no GPU and no system CUDA (the toolchain
# comes from PyPI's CUDA 13.0 wheels, ../shared/tools/cuda-toolchain.sh), regenerates the kernels' PTX (nf4.cu, fused.cu, lowrank.cu, flash.cu),
# and leaves stripped, gzipped binaries for a GPU machine: qlab.gz and cuda_reference.gz (the GPU tests).
#   scripts/build-cuda.sh [DEST_DIR]        (default DEST_DIR: .dev in the checkout, ignored by git)
# CARGO_TARGET_DIR is honoured (a separate target folder keeps the CPU build's artefacts apart).
# With a system CUDA (12.x or 13.0) instead: CUDA_COMPUTE_CAP=90 cargo build --release --features cuda
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$here/.dev}
# The study's tools folder beside the checkout, or wherever QLAB_CUDA_TOOLCHAIN points.
toolchain=${QLAB_CUDA_TOOLCHAIN:-$here/../shared/tools/cuda-toolchain.sh}
eval "$("$toolchain")"
cd "$here"
scripts/ptx.sh build
cargo build --release --features cuda --bin qlab --test cuda_reference
target=${CARGO_TARGET_DIR:-target}
tests=$(ls -t "$target"/release/deps/cuda_reference-* | grep -v '\.d$' | head -n 1)
mkdir -p "$dest"
strip -o "$dest/qlab" "$target"/release/qlab
strip -o "$dest/cuda_reference" "$tests"
gzip -f -9 "$dest/qlab" "$dest/cuda_reference"
ls -l "$dest"/qlab.gz "$dest"/cuda_reference.gz
