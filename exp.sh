#!/bin/bash
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
G=target/gpu
echo "== conformance"; $G/conformance --test-threads 1 2>&1 | grep -E "test result|FAILED"
M=$G/m/tern-T2.gguf
for be in webgpu cpu; do echo "== $be"; $G/tern generate -m $M --prompt "The capital of France is" -n 32 --temperature 0 --backend $be 2>/dev/null | tail -3; done
TERN=$G/tern ./scripts/gpu-bench.sh 3 "135m 1b 7b" "T4 Q4_0 T2" > $OUT/bench.txt 2>&1
grep -E "tg128|pp512" $OUT/bench.txt | sed -E 's/\| (webgpu|NVIDIA)[^|]*\|//' | cut -c1-130
