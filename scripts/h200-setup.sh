#!/usr/bin/env bash
# Sourced by the GPU device scripts (h200-*-bench.sh, gpu-ab-bench.sh): unpacks the carried binaries into
# /tmp/qlab-bin (.dev/qlab.gz and .dev/cuda_reference.gz as qlab and cuda_reference; with ARCHIVE set, the builds
# that scripts/pack-builds.sh packed, as qlab-NAME and tests-NAME), installs the peer's carried bitsandbytes wheel
# into /tmp/site, points LD_LIBRARY_PATH at CUDA 13's libraries, records the GPU in $out/gpu.txt ($out set by
# the caller), and defines bench_run, one training run of qlab or the peer recorded as a line of a JSONL file.
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

# bench_run FILE SIDE BATCH SEQ STEPS LIMIT_S [PRESET [FLAGS...]]: one training run of one side at Llama-3.1-8B dims
# (or PRESET's) with random weights, qlab ($qlab_bin, default /tmp/qlab-bin/qlab) or the peer, a line of FILE
# (scripts/h200_record.py) under the label $commit, which also names its logs; its exit status
bench_run() {
  local file=$1 side=$2 batch=$3 seq=$4 steps=$5 limit=$6 preset=${7:-llama-3.1-8b}
  local log="/tmp/qlab-logs/$2-${commit:-unknown}-$3x$4-${7:-}"
  mkdir -p /tmp/qlab-logs
  if [[ $side == qlab ]]; then
    timeout "$limit" "${qlab_bin:-/tmp/qlab-bin/qlab}" bench train --preset "$preset" --random-weights --batch "$batch" \
      --seq "$seq" --steps "$steps" --device cuda:0 --json "${@:8}" > "$log.json" 2> "$log.err"
  else
    # $steps steps instead of 8; with fewer than 3 the median is taken over all of them (it skips 2)
    sed -e "s/int(sys.argv\[3\]), 8$/int(sys.argv[3]), $steps/" \
      -e "s/times\[2:\]/(times[2:] if len(times) > 2 else times)/g" .dev/peer/peer_qlora_gpu.py > /tmp/peer.py
    PYTHONPATH=/tmp/site timeout "$limit" python3 /tmp/peer.py nf4 "$batch" "$seq" > "$log.json" 2> "$log.err"
  fi
  local status=$?
  python3 "$(dirname "${BASH_SOURCE[0]}")/h200_record.py" "$file" "$side" "$status" "$log" "$commit" batch="$batch" seq="$seq"
  return $status
}
