// Matrix products with quantized weights: y = x W^T for a batch of activation rows, the core of the
// forward pass. The fast path (Highway SIMD with runtime dispatch, OpenMP threads) decodes a tile
// of weight rows to floats once and reuses it across a chunk of tokens; matmul_ref is its plain
// scalar twin (double accumulation), and the tests hold one to the other.
#pragma once

#include "model/ggml_types.h"

#include <cstddef>
#include <cstdint>

namespace polarquant::model {

// A read-only view of a row-major weight matrix in any supported ggml type: `rows` rows of `cols`
// values each, rows contiguous (row_bytes apart). The data lives in the model's file mapping.
struct WeightMatrix {
  GgmlType type = GgmlType::kF32;
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_stride = 0;  // bytes between rows
  const uint8_t* row(int64_t r) const { return data + static_cast<size_t>(r) * row_stride; }
};

// Builds a view, checking that cols suits the type's block size; throws InvalidArgument otherwise.
WeightMatrix make_weight_matrix(GgmlType type, const uint8_t* data, int64_t rows, int64_t cols);

// y[t * w.rows + r] = sum_k W[r][k] * x[t * w.cols + k], for t < n_tokens.
// n_threads <= 0 uses OpenMP's default.
void matmul(const WeightMatrix& w, const float* x, size_t n_tokens, float* y, int n_threads = 0);
void matmul_ref(const WeightMatrix& w, const float* x, size_t n_tokens, float* y);

// Decodes rows [first, first + n) of w to floats (n x w.cols), SIMD where the type allows; results
// are bit-identical to dequantize_row_ref.
void dequantize_rows(const WeightMatrix& w, int64_t first, int64_t n, float* out);

namespace detail {
// Entry points of the per-target SIMD kernels (matmul_simd.cpp), exposed for the equivalence tests.
void dequantize_rows_simd(GgmlType type, const uint8_t* data, size_t row_stride, int64_t n_rows,
                          int64_t cols, float* out);
// y[t * y_stride + r] = dot(w[r * cols ...], x[t * x_stride ...]) for r < n_rows, t < n_tokens.
void dot_tile_simd(const float* w, int64_t n_rows, int64_t cols, const float* x, int64_t x_stride,
                   int64_t n_tokens, float* y, int64_t y_stride);
}  // namespace detail

}  // namespace polarquant::model
