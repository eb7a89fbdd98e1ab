#!/usr/bin/env bash
# Packs several CUDA builds (scripts/build-cuda.sh's DEST folders) into one solid xz archive for a GPU machine, so that
# an A/B comparison fits a device call's carry limit: the builds share nearly all their bytes, and one dictionary over
# all of them stores those once (three qlab and two test binaries: 16.6 MB, against 52 MB xz'd one by one).
#   scripts/pack-builds.sh OUT.tar.xz NAME=DIR [NAME=DIR ...]
# The archive holds qlab-NAME and tests-NAME (DIR's cuda_reference, when there is one) for each build;
# scripts/gpu-ab-bench.sh (through scripts/h200-setup.sh with ARCHIVE set) unpacks and runs them.
set -euo pipefail
out=${1:?usage: scripts/pack-builds.sh OUT.tar.xz NAME=DIR [NAME=DIR ...]}
shift
[[ $# -gt 0 ]] || { echo "pack-builds: no builds given (NAME=DIR)" >&2; exit 2; }
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
for build in "$@"; do
  name=${build%%=*} dir=${build#*=}
  [[ -f $dir/qlab.gz ]] || { echo "pack-builds: $dir/qlab.gz is missing (scripts/build-cuda.sh $dir)" >&2; exit 2; }
  gunzip -c "$dir/qlab.gz" > "$stage/qlab-$name"
  if [[ -f $dir/cuda_reference.gz ]]; then gunzip -c "$dir/cuda_reference.gz" > "$stage/tests-$name"; fi
done
tar -C "$stage" -cf - . | xz -T0 -9 --lzma2=preset=9,dict=256MiB > "$out"
ls -l "$out"
