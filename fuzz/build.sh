#!/usr/bin/env bash
# Builds the libFuzzer targets with Debian's clang (libFuzzer + ASan + UBSan) into build/fuzz, from
# the library sources the targets need; it does not touch the main CMake build.
#   fuzz/build.sh [build [TARGET...]]      build the targets (default: all four: gguf, llama2c,
#                                          tokenizer, cache_file)
#   fuzz/build.sh run SECONDS [TARGET...]  build the targets (default: all), then run each for
#                                          SECONDS (default 60), one after another, from the seeds
#                                          in fuzz/corpus/TARGET (fuzz/make_seeds.py; the
#                                          cache_file seeds come from the test suite)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${root}/build/fuzz"
mkdir -p "${out}"
CXX="${CXX:-clang++}"
flags=(-std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -I"${root}/include" -I"${root}/src")
# The model layer needs only these files (no SIMD kernels, codecs or cache) for parsing.
lib=("${root}"/src/model/{gguf,ggml_types,mapped_file,llama_model,bpe_tokenizer,sentencepiece_tokenizer}.cpp
     "${root}/src/model/matmul.cpp")
# matmul.cpp's SIMD kernels are not needed by the parsers; a scalar stand-in keeps Highway out.
cat > "${out}/matmul_scalar_stub.cpp" <<'STUB'
#include "model/matmul.h"
namespace polarquant::model::detail {
void dequantize_rows_simd(GgmlType type, const uint8_t* data, size_t row_stride, int64_t n_rows,
                          int64_t cols, float* out) {
  for (int64_t r = 0; r < n_rows; ++r) dequantize_row_ref(type, data + r * row_stride, out + r * cols, cols);
}
void dot_tile_simd(const float* w, int64_t n_rows, int64_t cols, const float* x, int64_t x_stride,
                   int64_t n_tokens, float* y, int64_t y_stride) {
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t r = 0; r < n_rows; ++r) {
      float s = 0.0f;
      for (int64_t k = 0; k < cols; ++k) s += w[r * cols + k] * x[t * x_stride + k];
      y[t * y_stride + r] = s;
    }
}
}  // namespace polarquant::model::detail
STUB
build_target() {
  local target="$1"
  echo "building ${out}/${target}_fuzz" >&2
  if [[ "${target}" == cache_file ]]; then
    # The cache file target needs the core, codec and cache layers (Highway for the rotations).
    # shellcheck disable=SC2046
    "${CXX}" "${flags[@]}" -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION $(pkg-config --cflags libhwy) \
      "${root}/fuzz/cache_file_fuzz.cpp" "${root}"/src/core/*.cpp "${root}"/src/codecs/*.cpp \
      "${root}"/src/cache/*.cpp -o "${out}/cache_file_fuzz" $(pkg-config --libs libhwy)
  else
    "${CXX}" "${flags[@]}" -fopenmp=libgomp "${root}/fuzz/${target}_fuzz.cpp" "${lib[@]}" \
      "${out}/matmul_scalar_stub.cpp" -o "${out}/${target}_fuzz" -lgomp
  fi
}
mode="${1:-build}"
[[ $# -gt 0 ]] && shift
seconds=60
if [[ "${mode}" == run ]]; then
  seconds="${1:-60}"
  [[ $# -gt 0 ]] && shift
fi
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(gguf llama2c tokenizer cache_file)
for target in "${targets[@]}"; do build_target "${target}"; done
if [[ "${mode}" == "run" ]]; then
  for target in "${targets[@]}"; do
    # The committed seeds (fuzz/corpus/TARGET, written by fuzz/make_seeds.py and the test suite)
    # start a working corpus under build/fuzz that the run grows.
    corpus="${out}/corpus_${target}"
    mkdir -p "${corpus}"
    cp -n "${root}/fuzz/corpus/${target}/"* "${corpus}/" 2>/dev/null || true
    echo "running ${target}_fuzz for ${seconds}s" >&2
    "${out}/${target}_fuzz" -max_total_time="${seconds}" -max_len=65536 -rss_limit_mb=4096 \
      -print_final_stats=1 -artifact_prefix="${out}/crash_${target}_" "${corpus}"
  done
fi
