#!/usr/bin/env bash
# Decode attention beside llama.cpp's CPU flash attention (bench/llamacpp/flash_attn_vs_ggml.cpp).
# Run by hand; not part of the default build, the tests or CI. Needs network access to PyPI once.
#
#   bash bench/llamacpp/run.sh [ROUNDS] [SHAPE]     # SHAPE: llama3_8b or smollm2 (default both)
#
# Fetches the llama-cpp-python source distribution (pinned below) with pip, builds its vendored
# ggml (CPU only, static, -march=native unless GGML_AVX2_ONLY=1, which builds ggml for AVX2 + FMA +
# F16C and runs ours with POLARQUANT_CPU=avx2), builds this project's library (Release) if
# POLARQUANT_BUILD has none, links the driver against both and runs it. Everything goes under
# build/llamacpp/ (WORK=...) and POLARQUANT_BUILD (default build/rel).
set -euo pipefail

VERSION=0.3.16  # llama-cpp-python; vendors llama.cpp/ggml (ggml_version() is printed)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${WORK:-$ROOT/build/llamacpp}
BUILD=${POLARQUANT_BUILD:-$ROOT/build/rel}
JOBS=${JOBS:-$(nproc)}
mkdir -p "$WORK"

sdist="$WORK/llama_cpp_python-$VERSION.tar.gz"
if [[ ! -f $sdist ]]; then
  pip download --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$WORK"
fi
src="$WORK/llama_cpp_python-$VERSION"
[[ -d $src ]] || tar xzf "$sdist" -C "$WORK"

ggml_flags=(-DGGML_NATIVE=ON)
ggml_build="$WORK/ggml-native"
if [[ ${GGML_AVX2_ONLY:-0} == 1 ]]; then
  ggml_flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
              -DGGML_AVX512=OFF -DGGML_BMI2=ON)
  ggml_build="$WORK/ggml-avx2"
  export POLARQUANT_CPU=avx2
fi
cmake -S "$src/vendor/llama.cpp" -B "$ggml_build" -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=OFF -DGGML_OPENMP=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF "${ggml_flags[@]}" > "$ggml_build.log" 2>&1
cmake --build "$ggml_build" -j "$JOBS" --target ggml >> "$ggml_build.log" 2>&1

if [[ ! -f $BUILD/libpolarquant.a ]]; then
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DPOLARQUANT_CUDA=OFF
fi
cmake --build "$BUILD" -j "$JOBS" --target polarquant

lib="$ggml_build/ggml/src"
g++ -O2 -std=c++20 -fopenmp -I"$ROOT/include" -I"$src/vendor/llama.cpp/ggml/include" \
  "$ROOT/bench/llamacpp/flash_attn_vs_ggml.cpp" "$BUILD/libpolarquant.a" \
  "$lib/libggml.a" "$lib/libggml-cpu.a" "$lib/libggml-base.a" $(pkg-config --libs libhwy) \
  -lm -ldl -lpthread -o "$ggml_build/flash_attn_vs_ggml"
OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive} "$ggml_build/flash_attn_vs_ggml" "$@"
