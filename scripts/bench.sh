#!/usr/bin/env bash
# tern against llama.cpp on the same GGUF, same machine, same run: ROUNDS alternating rounds of
# `llama-bench -t THREADS` and `tern bench -t THREADS` (each pp512 and tg128, 3 repetitions), then the median
# tokens/s of each over all rounds and the ratio tern / llama.cpp. Builds what is missing first.
# Usage: [DEPTH=N] scripts/bench.sh [ROUNDS=5] [THREADS=2] [MODEL] [TERN_MODEL]
# TERN_MODEL (default: MODEL) lets tern run its own file, e.g. a T4 file against llama.cpp's Q4_K_M of the
# same source. DEPTH (default 0) fills each side's KV cache with that many positions before every test
# (`-d`), for the speed at a depth of context.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
threads=${2:-2}
model=${3:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
tern_model=${4:-$model}
depth=${DEPTH:-0}

[ -f "$model" ] || ./scripts/fetch-model.sh
./scripts/build-llama-cpp.sh >&2
cargo build --locked --release -p tern-cli >&2
bin=.cache/llama.cpp/build/bin
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

for i in $(seq "$rounds"); do
  echo "round $i/$rounds" >&2
  LD_LIBRARY_PATH=$bin "$bin/llama-bench" -m "$model" -t "$threads" -r 3 -d "$depth" -o csv >>"$out/llama.csv"
  ./target/release/tern bench -m "$tern_model" -t "$threads" -r 3 -d "$depth" >>"$out/tern.md"
done

python3 - "$out" "$model" "$threads" "$rounds" "$tern_model" "$depth" <<'PY'
import csv, statistics, sys
out, model, threads, rounds, tern_model, depth = sys.argv[1:]
llama = {"pp512": [], "tg128": []}
with open(f"{out}/llama.csv") as f:
    rows = list(csv.reader(f))
names = rows[0]
for row in rows:
    if row[0] == "build_commit":
        continue
    rec = dict(zip(names, row))
    test = "pp512" if rec["n_prompt"] == "512" else "tg128" if rec["n_gen"] == "128" else None
    if test:
        llama[test].append(float(rec["avg_ts"]))
tern = {"pp512": [], "tg128": []}
for line in open(f"{out}/tern.md"):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    test = cells[5].split(" @ ")[0] if len(cells) >= 7 else None
    if test in tern:
        tern[test].append(float(cells[6]))
label = model.split('/')[-1] if tern_model == model else f"llama.cpp {model.split('/')[-1]}, tern {tern_model.split('/')[-1]}"
at = f", {depth} positions of context" if depth != "0" else ""
print(f"model {label}, {threads} threads, {rounds} rounds{at}\n")
print("| test | llama.cpp t/s (median of rounds) | tern t/s (median of rounds) | tern / llama.cpp |")
print("| --- | ---: | ---: | ---: |")
for test in ("pp512", "tg128"):
    l, t = statistics.median(llama[test]), statistics.median(tern[test])
    print(f"| {test} | {l:.1f} ({min(llama[test]):.1f} - {max(llama[test]):.1f}) | "
          f"{t:.1f} ({min(tern[test]):.1f} - {max(tern[test]):.1f}) | {t / l:.2f} |")
PY
