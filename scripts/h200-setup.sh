#!/usr/bin/env bash
# Sourced by the GPU device scripts (h200-*-bench.sh, gpu-ab-bench.sh): unpacks the carried binaries into
# /tmp/qlab-bin (.dev/qlab.gz and .dev/cuda_reference.gz as qlab and cuda_reference; with ARCHIVE set, the builds
# that scripts/pack-builds.sh packed, as qlab-NAME and tests-NAME), installs the peer's carried bitsandbytes wheel
# into /tmp/site, points LD_LIBRARY_PATH at CUDA 13's libraries, and records the GPU in $out/gpu.txt ($out set by
# the caller).
mkdir -p "$out" /tmp/qlab-bin
export LD_LIBRARY_PATH=/usr/lib:/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
if [[ -n ${ARCHIVE:-} ]]; then
  python3 -c "import sys, tarfile; tarfile.open(sys.argv[1], 'r:xz').extractall(sys.argv[2])" "$ARCHIVE" /tmp/qlab-bin
  chmod +x /tmp/qlab-bin/*
else
  for b in qlab cuda_reference; do gunzip -c ".dev/$b.gz" > "/tmp/qlab-bin/$b" && chmod +x "/tmp/qlab-bin/$b"; done
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; date -u; } | tee "$out/gpu.txt"
