#!/usr/bin/env bash
# Builds the reference/competitor llama.cpp from the source vendored in PyPI's llama-cpp-python sdist,
# into .cache/llama.cpp/ (git-ignored): llama-bench, llama-perplexity, llama-quantize, llama-cli.
# With --python it also installs llama-cpp-python (the Python API used by scripts/make-golden.py).
# Does nothing for the parts that are already built.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD/.cache/llama.cpp
mkdir -p "$root"

python3 -m pip install --quiet cmake ninja scikit-build-core
sdist=$(ls "$root"/llama_cpp_python-*.tar.gz 2>/dev/null | head -n1 || true)
if [ -z "$sdist" ]; then
  python3 -m pip download --quiet --no-deps --no-build-isolation --no-binary :all: --dest "$root" llama-cpp-python
  sdist=$(ls "$root"/llama_cpp_python-*.tar.gz | head -n1)
fi
src=$root/src
if [ ! -d "$src" ]; then
  mkdir -p "$src"
  tar -xzf "$sdist" -C "$src" --strip-components=1
fi

if [ ! -x "$root/build/bin/llama-imatrix" ]; then
  cmake -S "$src/vendor/llama.cpp" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF
  cmake --build "$root/build" -j"$(nproc)" --target llama-bench llama-perplexity llama-quantize llama-imatrix
fi
echo "llama.cpp tools in $root/build/bin" >&2

if [ "${1:-}" = "--python" ] && ! python3 -c 'import llama_cpp' 2>/dev/null; then
  CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" python3 -m pip install --quiet --no-build-isolation "$sdist" numpy
fi
