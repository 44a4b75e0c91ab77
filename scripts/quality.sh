#!/usr/bin/env bash
# docs/QUALITY.md's measurements: tern's formats against llama.cpp's on SmolLM2-135M, both quantized from the
# same f32 model (dequantized from the shipped Q4_1 file), both with an importance matrix from the first half of
# each corpus file, all scored on text from the second halves, with the f32 model as the KL reference.
#
#   ./scripts/quality.sh [CHUNKS] [tern|llama|all]
#
# Files already made are reused (the f32 model, importance matrices, quantized files, reference log-probabilities,
# finished evaluations); delete .cache/quality/ to start over.
# Writes its files under .cache/quality/ and prints one markdown row per model to .cache/quality/rows-*.md.
set -euo pipefail
cd "$(dirname "$0")/.."
chunks=${1:-40}
which=${2:-all}
out=.cache/quality
mkdir -p "$out"
./scripts/fetch-model.sh >/dev/null
./scripts/build-llama-cpp.sh >/dev/null
bin=.cache/llama.cpp/build/bin
export LD_LIBRARY_PATH=$bin
threads=$(nproc)

# Calibration: the first half of each corpus file; evaluation: 48 KB from the start of each second half.
python3 - "$out" <<'PY'
import sys, pathlib
out = pathlib.Path(sys.argv[1])
calib, evals = [], []
for name in ["devils-dictionary.txt", "python-tutorial.txt"]:
    t = (pathlib.Path("../shared/corpus") / name).read_text(encoding="utf-8")
    mid = len(t) // 2
    calib.append(t[:mid])
    evals.append(t[mid:mid + 48000])
(out / "calibration.txt").write_text("".join(calib), encoding="utf-8")
(out / "eval.txt").write_text("".join(evals), encoding="utf-8")
PY

f32=$out/f32.gguf
[ -f "$f32" ] || "$bin/llama-quantize" --allow-requantize models/SmolLM2-135M-Instruct.Q4_1.gguf "$f32" F32 >/dev/null 2>&1

# Tensor-data bits per weight of a GGUF file (what llama.cpp's tools call BPW), from its directory.
bpw() {
  python3 - "$1" <<'PY'
import struct, sys
# Block sizes and bytes per block of the ggml types these files use (ggml.c's type traits).
traits = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 10: (256, 84), 11: (256, 110),
          12: (256, 144), 13: (256, 176), 14: (256, 210), 16: (256, 66), 17: (256, 74), 18: (256, 98),
          19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1), 29: (256, 56), 30: (1, 2)}
f = open(sys.argv[1], "rb")
def u32(): return struct.unpack("<I", f.read(4))[0]
def u64(): return struct.unpack("<Q", f.read(8))[0]
def skip_value(t):
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    if t in sizes: f.read(sizes[t])
    elif t == 8: f.read(u64())
    elif t == 9:
        et, n = u32(), u64()
        for _ in range(n): skip_value(et)
def string(): return f.read(u64()).decode()
assert f.read(4) == b"GGUF"; u32(); nt, nk = u64(), u64()
meta = {}
for _ in range(nk):
    k, t = string(), u32()
    if t == 9 and k.startswith("tern.dims."):
        et, n = u32(), u64(); meta[k] = [u64() for _ in range(n)]
    else:
        skip_value(t)
bits = params = 0
for _ in range(nt):
    name = string(); nd = u32(); dims = [u64() for _ in range(nd)]; t = u32(); u64()
    if t == 24 and ("tern.dims." + name) in meta:
        d = meta["tern.dims." + name]; params += d[0] * d[1]; bits += 8 * dims[0]; continue
    n = 1
    for d in dims: n *= d
    blk, by = traits[t]
    params += n; bits += 8 * n // blk * by
print(f"{bits / params:.4f}")
PY
}

row() { # name file bpw ppl_line kl_line top1_line
  echo "| $1 | $2 | $3 | $4 | $5 | $6 |"
}

if [ "$which" = all ] || [ "$which" = llama ]; then
  rows=$out/rows-llama.md
  : > "$rows"
  [ -f "$out/llama.imatrix" ] || "$bin/llama-imatrix" -m "$f32" -f "$out/calibration.txt" -c 512 --chunks "$chunks" -t "$threads" -o "$out/llama.imatrix" >/dev/null 2>&1
  [ -f "$out/f32.kld" ] || "$bin/llama-perplexity" -m "$f32" -f "$out/eval.txt" -c 512 --chunks "$chunks" -t "$threads" --kl-divergence-base "$out/f32.kld" > "$out/f32.llama.log" 2>&1
  ppl=$(grep -o "Final estimate: PPL = [0-9.]* +/- [0-9.]*" "$out/f32.llama.log" | sed 's/Final estimate: PPL = //; s/+\/-/±/')
  row "f32 (reference)" "f32.gguf" "$(bpw "$f32")" "$ppl" "0" "100%" >> "$rows"
  for ty in Q2_K Q3_K_S Q3_K_M Q4_K_S Q4_K_M IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S IQ4_XS Q4_0 Q8_0; do
    file=$out/llama-$ty.gguf
    [ -f "$file" ] || "$bin/llama-quantize" --imatrix "$out/llama.imatrix" "$f32" "$file" "$ty" "$threads" > "$out/llama-$ty.quantize.log" 2>&1 || { echo "llama-quantize $ty failed" >&2; continue; }
    log=$out/llama-$ty.log
    grep -q "Mean    KLD" "$log" 2>/dev/null ||
      "$bin/llama-perplexity" -m "$file" -f "$out/eval.txt" -c 512 --chunks "$chunks" -t "$threads" --kl-divergence-base "$out/f32.kld" --kl-divergence > "$log" 2>&1
    ppl=$(grep -o "Mean PPL(Q) *: *[0-9.]* *± *[0-9.]*" "$log" | sed 's/Mean PPL(Q) *: *//')
    kl=$(grep -o "Mean    KLD: *[0-9.-]* *± *[0-9.]*" "$log" | sed 's/Mean    KLD: *//')
    top1=$(grep -o "Same top p: *[0-9.]* *± *[0-9.]* %" "$log" | sed 's/Same top p: *//')
    row "llama.cpp $ty" "llama-$ty.gguf" "$(bpw "$file")" "$ppl" "$kl" "$top1" >> "$rows"
  done
fi

if [ "$which" = all ] || [ "$which" = tern ]; then
  cargo build --release --locked -p tern-cli >/dev/null 2>&1
  tern=./target/release/tern
  rows=$out/rows-tern.md
  : > "$rows"
  [ -f "$out/tern.imatrix.gguf" ] || $tern imatrix -m "$f32" --text "$out/calibration.txt" --chunks "$chunks" -o "$out/tern.imatrix.gguf" >/dev/null
  models=()
  # Quantize unless the file is there already (delete .cache/quality/tern-* to redo).
  quantize() { # name, args...
    local name=$1; shift
    [ -f "$out/tern-$name.gguf" ] || $tern quantize -m "$f32" -o "$out/tern-$name.gguf" --imatrix "$out/tern.imatrix.gguf" "$@" \
      > "$out/tern-$name.quantize.log"
    models+=("$out/tern-$name.gguf")
  }
  for bits in 2 3 4 8; do
    quantize "T$bits" --bits "$bits"
  done
  for bits in 2 3 4; do
    quantize "T$bits+feedback" --bits "$bits" --calibration "$out/calibration.txt" --error-feedback
  done
  for target in 2.5 3.0 3.5 4.5 5.0; do
    quantize "mix$target" --target-bpw "$target" --calibration "$out/calibration.txt" --sensitivity-tokens 128 \
      --sensitivity-cache "$out/tern.sensitivity.json" --verbose
  done
  # The planner and error feedback together: aimed under 4.6 bits per weight, and at the low targets.
  for target in 2.5 3.0 4.55; do
    quantize "mix$target+feedback" --target-bpw "$target" --calibration "$out/calibration.txt" --error-feedback \
      --sensitivity-tokens 128 --sensitivity-cache "$out/tern.sensitivity.json" --verbose
  done
  # The f32 model's log-probabilities once (about 2 GB for 40 chunks), with an f32 KV cache, then every model
  # against them with tern's default f16 cache (as llama.cpp's runs use theirs).
  [ -f "$out/f32.tern.logits" ] || $tern eval -m "$f32" --text "$out/eval.txt" --chunks "$chunks" --kv-cache f32 \
    --save-logits "$out/f32.tern.logits" > "$out/f32.tern.eval.log" 2>&1
  for m in "${models[@]}"; do
    log=${m%.gguf}.eval.log
    grep -q "^PPL = " "$log" 2>/dev/null ||
      $tern eval -m "$m" --text "$out/eval.txt" --chunks "$chunks" --reference-logits "$out/f32.tern.logits" > "$log" 2>&1
    ppl=$(grep "^PPL = " "$log" | sed 's/PPL = //')
    kl=$(grep "^KL-divergence = " "$log" | sed 's/KL-divergence = //')
    top1=$(grep "^top-1 agreement = " "$log" | sed 's/top-1 agreement = //')
    row "tern $(basename "${m%.gguf}" | sed 's/tern-//')" "$(basename "$m")" "$(bpw "$m")" "$ppl" "$kl" "$top1" >> "$rows"
  done
fi
cat "$out"/rows-*.md
