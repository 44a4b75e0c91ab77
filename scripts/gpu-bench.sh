#!/usr/bin/env bash
# tern's WebGPU speed on a real GPU through Vulkan, next to the fp16 PyTorch reference, for BENCHMARKS.md.
# Runs on the GPU machine from the repository root, with target/release/tern built and .gl/ holding the Vulkan
# loader's .deb files (DESIGN.md, "A real GPU").
# Usage: scripts/gpu-bench.sh [REPETITIONS] [SHAPES] [WEIGHTS] [DEPTHS] [KV CACHES]
# DEPTHS are positions already in the KV cache when each test starts (`tern bench -d`, default 0); KV CACHES
# are `--kv-cache` types (default f16). PyTorch (fp16 cache) runs once per shape and depth.
set -uo pipefail
reps=${1:-3}
shapes=${2:-"135m 1b 7b"}
weights=${3:-"T4 Q4_0 T2"}
depths=${4:-0}
caches=${5:-f16}
if [ -d .gl ]; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv 2>/dev/null
tern=${TERN:-./target/release/tern}
$tern info 2>&1 | grep -v XDG_RUNTIME_DIR
for shape in $shapes; do
  for d in $depths; do
    for w in $weights; do
      for kv in $caches; do
        $tern bench --synthetic "$shape" --weights "$w" --backend webgpu -p 512 -n 128 -r "$reps" -d "$d" --kv-cache "$kv" 2>&1 |
          grep -v XDG_RUNTIME_DIR
      done
    done
    python3 scripts/torch-bench.py "$shape" -p 512 -n 128 -r "$reps" -d "$d"
  done
done
