#!/usr/bin/env bash
# Installs what tern's tests need, fetches the model, and runs the whole suite. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*" >&2; }

step "model"
./scripts/fetch-model.sh

step "wasm32 target"
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi

step "portable crates build for wasm32-unknown-unknown"
cargo check --locked --target wasm32-unknown-unknown \
  -p tern-core -p tern-quant -p tern-loader -p tern-model -p tern-backend-cpu

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --workspace --no-fail-fast
else
  cargo test --locked --workspace --no-fail-fast
fi
