#!/usr/bin/env bash
# Builds the libFuzzer targets with Debian's clang (libFuzzer + ASan + UBSan) into build/fuzz, from
# the library sources the targets need; it does not touch the main CMake build.
#   fuzz/build.sh                 build the three targets
#   fuzz/build.sh run SECONDS     build, then run each target for SECONDS (default 60) on its corpus
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
for target in gguf llama2c tokenizer; do
  echo "building ${out}/${target}_fuzz" >&2
  "${CXX}" "${flags[@]}" -fopenmp=libgomp "${root}/fuzz/${target}_fuzz.cpp" "${lib[@]}" "${out}/matmul_scalar_stub.cpp" \
    -o "${out}/${target}_fuzz" -lgomp
done
if [[ "${1:-}" == "run" ]]; then
  seconds="${2:-60}"
  for target in gguf llama2c tokenizer; do
    corpus="${out}/corpus_${target}"
    mkdir -p "${corpus}"
    # Seeds: the tiny real model and tokenizer when ../shared is present.
    case "${target}" in
      gguf) python3 - "${corpus}/seed.gguf" <<'PY'
# A small valid GGUF v3: a few metadata keys of each kind and two tensors (F32 and Q8_0).
import struct, sys
def s(x): b = x.encode(); return struct.pack('<Q', len(b)) + b
kv = [s('general.architecture') + struct.pack('<I', 8) + s('llama'),
      s('llama.block_count') + struct.pack('<II', 4, 1),
      s('llama.rope.freq_base') + struct.pack('<If', 6, 10000.0),
      s('tokenizer.ggml.model') + struct.pack('<I', 8) + s('gpt2'),
      s('tokenizer.ggml.tokens') + struct.pack('<IIQ', 9, 8, 3) + s('a') + s('b') + s('ab'),
      s('tokenizer.ggml.merges') + struct.pack('<IIQ', 9, 8, 1) + s('a b')]
tensors = [(s('v') + struct.pack('<IQIQ', 1, 32, 0, 0), b'\0' * 128),
           (s('m') + struct.pack('<IQQIQ', 2, 32, 1, 8, 128), b'\0' * 34)]
out = struct.pack('<IIQQ', 0x46554747, 3, len(tensors), len(kv)) + b''.join(kv) + b''.join(t[0] for t in tensors)
out += b'\0' * (-len(out) % 32) + tensors[0][1] + tensors[1][1]
open(sys.argv[1], 'wb').write(out)
PY
        ;;
      llama2c) [[ -f "${root}/../shared/models/stories260K.bin" ]] && cp -n "${root}/../shared/models/stories260K.bin" "${corpus}/" ;;
      tokenizer) [[ -f "${root}/../shared/models/tok512.bin" ]] && cp -n "${root}/../shared/models/tok512.bin" "${corpus}/" ;;
    esac
    echo "running ${target}_fuzz for ${seconds}s" >&2
    "${out}/${target}_fuzz" -max_total_time="${seconds}" -max_len=65536 -rss_limit_mb=4096 "${corpus}"
  done
fi
