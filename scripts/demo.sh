#!/usr/bin/env bash
# tern's main job: fetch the default model if missing, build tern, and stream a generation to the terminal.
# Usage: scripts/demo.sh ["prompt"] [extra `tern generate` flags...]
set -euo pipefail
cd "$(dirname "$0")/.."

prompt=${1:-"The three most useful things to know about rivers are"}
shift || true

./scripts/fetch-model.sh
cargo build --locked --release -p tern-cli >&2
exec ./target/release/tern generate --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
  --prompt "$prompt" --max-tokens 96 "$@"
