#include "model/matmul.h"

#include <polarquant/error.h>

#include <omp.h>

#include <algorithm>
#include <vector>

namespace polarquant::model {

namespace {
// Weight rows decoded at once (the tile stays in L1/L2 while a chunk of tokens reuses it) and
// tokens per chunk (their activations stay in L2 while every tile passes over them).
constexpr int64_t kTileRows = 16;
constexpr int64_t kTokenChunk = 64;
}  // namespace

WeightMatrix make_weight_matrix(GgmlType type, const uint8_t* data, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) {
    throw_invalid("weight matrix needs positive rows and cols, got " + std::to_string(rows) +
                  " x " + std::to_string(cols));
  }
  WeightMatrix w;
  w.type = type;
  w.data = data;
  w.rows = rows;
  w.cols = cols;
  w.row_stride = row_bytes(type, cols);
  return w;
}

void matmul_ref(const WeightMatrix& w, const float* x, size_t n_tokens, float* y) {
  for (size_t t = 0; t < n_tokens; ++t) {
    for (int64_t r = 0; r < w.rows; ++r) {
      y[t * w.rows + r] = static_cast<float>(dot_row_ref(w.type, w.row(r), x + t * w.cols, w.cols));
    }
  }
}

void dequantize_rows(const WeightMatrix& w, int64_t first, int64_t n, float* out) {
  if (first < 0 || n < 0 || first + n > w.rows) {
    throw_invalid("dequantize_rows: rows [" + std::to_string(first) + ", " +
                  std::to_string(first + n) + ") outside the matrix of " + std::to_string(w.rows) +
                  " rows");
  }
  detail::dequantize_rows_simd(w.type, w.row(first), w.row_stride, n, w.cols, out);
}

void matmul(const WeightMatrix& w, const float* x, size_t n_tokens, float* y, int n_threads) {
  if (n_tokens == 0) return;
  const int64_t n_tiles = (w.rows + kTileRows - 1) / kTileRows;
  const int threads = n_threads > 0 ? n_threads : omp_get_max_threads();
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> tile(static_cast<size_t>(kTileRows * w.cols));
    // With few tokens every tile is decoded once; with many, tokens are walked in chunks so the
    // activations stay in cache, and each chunk re-decodes the tiles (1/kTokenChunk extra work).
    for (size_t t0 = 0; t0 < n_tokens; t0 += kTokenChunk) {
      const int64_t nt = static_cast<int64_t>(std::min<size_t>(kTokenChunk, n_tokens - t0));
#pragma omp for schedule(static)
      for (int64_t tile_index = 0; tile_index < n_tiles; ++tile_index) {
        const int64_t r0 = tile_index * kTileRows;
        const int64_t nr = std::min(kTileRows, w.rows - r0);
        detail::dequantize_rows_simd(w.type, w.row(r0), w.row_stride, nr, w.cols, tile.data());
        detail::dot_tile_simd(tile.data(), nr, w.cols, x + t0 * w.cols, w.cols, nt,
                              y + t0 * w.rows + r0, w.rows);
      }
    }
  }
}

}  // namespace polarquant::model
