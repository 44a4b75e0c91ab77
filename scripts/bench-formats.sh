#!/usr/bin/env bash
# tern's formats against llama.cpp's matching types, each pair quantized from the same f32 model by
# scripts/quality.sh (run it first): `scripts/bench.sh ROUNDS THREADS <llama.cpp file> <tern file>` per pair.
# Usage: scripts/bench-formats.sh [ROUNDS=3] [THREADS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
threads=${2:-2}
q=.cache/quality
for pair in Q2_K:T2 Q3_K_M:T3 Q4_0:T4 Q4_K_M:T4 Q8_0:T8; do
  llama=$q/llama-${pair%%:*}.gguf
  tern=$q/tern-${pair##*:}.gguf
  for f in "$llama" "$tern"; do
    [ -f "$f" ] || { echo "$f is missing: run scripts/quality.sh first" >&2; exit 1; }
  done
  ./scripts/bench.sh "$rounds" "$threads" "$llama" "$tern" 2>/dev/null
  echo
done
