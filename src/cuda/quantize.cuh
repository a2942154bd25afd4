// Device pieces shared by the encoders and the dequantizer (encode.cu, encode_units.cu): the
// 32-slot chunk a block works on, the rotation of a chunk's rows, and the CPU's atan2-free
// quantizer. Numerics follow the CPU bit for bit: the rotation sums x_j * S^T[j] in the CPU's order
// with one fused multiply-add each (as its SIMD path does), radii are sqrt(a*a + b*b) without
// contraction, and codes come from the CPU's boundary comparisons with the same float constants.
#pragma once

#include <cuda_fp16.h>

#include <cstddef>
#include <cstdint>

#include "cuda/device_codec.h"

namespace polarquant::cuda::chunk {

constexpr int kChunk = 32;  // slots per block
constexpr int kThreads = 128;

// The quantizer's constants, copied to shared memory by each block (at most 8 levels x 256).
struct QuantTables {
  const float* bcos;
  const float* bsin;
  float cos_first, sin_first, cos_last, sin_last;
};

// Y[t][i] = sum_j X[t][j] * M[j][i] for the 32 rows of a chunk: one fused multiply-add per j,
// j ascending, as the CPU's SIMD combine_rows (Highway MulAdd) does.
// M: global, row-major D x D; Ms: shared scratch of 32 x D floats; X and Y rows kRow floats apart.
template <int D, int kRow = D>
__device__ inline void rotate_tile(const float* X, const float* M, float* Ms, float* Y) {
  constexpr int kGroups = D / 8;  // column groups of 8
  constexpr int kTm = D / 32;     // rows per thread
  const int cg = threadIdx.x % kGroups;
  const int t0 = (threadIdx.x / kGroups) * kTm;
  float acc[kTm][8];
#pragma unroll
  for (int m = 0; m < kTm; ++m)
#pragma unroll
    for (int k = 0; k < 8; ++k) acc[m][k] = 0.0f;
  for (int j0 = 0; j0 < D; j0 += 32) {
    for (int i = threadIdx.x; i < 32 * D / 4; i += kThreads) {
      reinterpret_cast<float4*>(Ms)[i] = reinterpret_cast<const float4*>(M + j0 * D)[i];
    }
    __syncthreads();
#pragma unroll 4
    for (int jj = 0; jj < 32; ++jj) {
      const float4 s0 = reinterpret_cast<const float4*>(Ms + jj * D + cg * 8)[0];
      const float4 s1 = reinterpret_cast<const float4*>(Ms + jj * D + cg * 8)[1];
      const float s[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
#pragma unroll
      for (int m = 0; m < kTm; ++m) {
        const float x = X[(t0 + m) * kRow + j0 + jj];
#pragma unroll
        for (int k = 0; k < 8; ++k) acc[m][k] = __fmaf_rn(x, s[k], acc[m][k]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int m = 0; m < kTm; ++m)
#pragma unroll
    for (int k = 0; k < 8; ++k) Y[(t0 + m) * kRow + cg * 8 + k] = acc[m][k];
}

// rotate_tile for a chunk with one active row t (a decode step appends one token per sequence):
// the same sums in the same order (one fused multiply-add per j, j ascending), one output column
// per thread instead of 32 rows x 8 columns, so a block does 1/32 of rotate_tile's work; the other
// rows of Y are zeroed (their lanes are inactive). No barrier inside; X must be complete.
template <int D, int kRow = D>
__device__ inline void rotate_row(const float* X, const float* M, int t, float* Y) {
  for (int i = threadIdx.x; i < D; i += kThreads) {
    float acc = 0.0f;
#pragma unroll 16
    for (int j = 0; j < D; ++j) acc = __fmaf_rn(X[t * kRow + j], M[j * D + i], acc);
    Y[t * kRow + i] = acc;
  }
  for (int e = threadIdx.x; e < 32 * D; e += kThreads) {
    const int r = e / D;
    if (r != t) Y[r * kRow + e % D] = 0.0f;
  }
}

// fb cos(t) - fa sin(t) > 0, i.e. the angle of (fa, fb) lies above boundary t; no contraction,
// as on the CPU.
__device__ __forceinline__ bool above(float fa, float fb, float c, float s) {
  return __fsub_rn(__fmul_rn(fb, c), __fmul_rn(fa, s)) > 0.0f;
}

// PolarCodec::quantize_rotated's level-1 rule: fold the lower half-plane onto the upper, count
// the boundaries below the angle, and settle the wrap-around between the first and last code by
// comparing projections onto their centroids. B > 0: the width known at compile time.
template <int B = 0>
__device__ __forceinline__ unsigned quantize_level1(const DeviceCodec& c, const QuantTables& t,
                                                    float a, float b) {
  const int k = B > 0 ? 1 << B : 1 << c.bits[0];
  const bool upper = b > 0.0f || (b == 0.0f && a >= 0.0f);
  const float fa = upper ? a : -a, fb = upper ? b : -b;
  const int lo = upper ? 0 : c.level1_upper, hi = upper ? c.level1_upper : k - 1;
  int q = lo;
  if (B > 0 && c.level1_search) {
    // Boundaries far apart (DeviceCodec::level1_search): the tests are monotone in i (true, then
    // false) beyond float rounding, so the count is a binary search for the first false one,
    // log2(hi - lo) tests instead of hi - lo, in a fixed number of unrolled steps (so the pairs
    // of a unit interleave).
    constexpr int kTop = B > 1 ? 1 << (B > 1 ? B - 1 : 0) : 1;  // largest power of 2 < 2^B
#pragma unroll
    for (int step = kTop; step >= 1; step /= 2) {
      const int mid = q + step - 1;
      if (mid < hi && above(fa, fb, t.bcos[mid], t.bsin[mid])) q += step;
    }
  } else {
    for (int i = lo; i < hi; ++i) q += above(fa, fb, t.bcos[i], t.bsin[i]) ? 1 : 0;
  }
  if (q == 0 || q == k - 1) {
    const float first = __fadd_rn(__fmul_rn(a, t.cos_first), __fmul_rn(b, t.sin_first));
    const float last = __fadd_rn(__fmul_rn(a, t.cos_last), __fmul_rn(b, t.sin_last));
    q = first >= last ? 0 : k - 1;
  }
  return static_cast<unsigned>(q);
}

template <int B = 0>
__device__ __forceinline__ unsigned quantize_upper(const DeviceCodec& c, const QuantTables& t,
                                                   int level, float a, float b) {
  const int off = c.table_offset[level - 1];
  const int nb = B > 0 ? (1 << B) - 1 : (1 << c.bits[level - 1]) - 1;
  int q = 0;
#pragma unroll
  for (int i = 0; i < nb; ++i) q += above(a, b, t.bcos[off + i], t.bsin[off + i]) ? 1 : 0;
  return static_cast<unsigned>(q);
}

// Copies the quantizer's boundary constants to shared memory (visible after the caller's next
// barrier) and returns the tables over them.
__device__ __forceinline__ QuantTables load_quant_tables(const DeviceCodec& c, float* bcos,
                                                         float* bsin) {
  for (int i = threadIdx.x; i < c.table_entries; i += kThreads) {
    bcos[i] = c.boundary_cos[i];
    bsin[i] = c.boundary_sin[i];
  }
  const int k1 = 1 << c.bits[0];
  return {bcos, bsin, c.cos_table[0], c.sin_table[0], c.cos_table[k1 - 1], c.sin_table[k1 - 1]};
}

struct ChunkJob {
  uint8_t* region = nullptr;  // head region of the page
  int slot0 = 0;              // first slot of the chunk in the page (a multiple of 32)
  int begin = 0, end = 0;     // active chunk-local slots [begin, end)
  const float* x = nullptr;   // row of chunk-local slot `begin` (stride x_stride floats)
  size_t x_stride = 0;
};

// Prefill: chunk blockIdx.x of positions [first, first + n). Append: sequence blockIdx.x.
__device__ inline ChunkJob chunk_job(const DeviceCodec& c, uint8_t* pool, const int32_t* tables,
                                     int max_pages, const int32_t* positions, size_t first,
                                     size_t n, const float* x) {
  ChunkJob job;
  const int h = blockIdx.y;
  size_t pos_begin, pos_end, row0;
  const int32_t* table = tables;
  if (positions == nullptr) {
    const size_t c0 = (first / kChunk + blockIdx.x) * kChunk;
    pos_begin = c0 > first ? c0 : first;
    pos_end = c0 + kChunk < first + n ? c0 + kChunk : first + n;
    row0 = pos_begin - first;
    job.x_stride = static_cast<size_t>(c.n_kv_heads) * c.dim;
  } else {
    pos_begin = static_cast<size_t>(positions[blockIdx.x]);
    pos_end = pos_begin + 1;
    row0 = blockIdx.x;
    table = tables + static_cast<size_t>(blockIdx.x) * max_pages;
    job.x_stride = 0;
  }
  const size_t page = pos_begin / c.page_tokens;
  const int slot = static_cast<int>(pos_begin % c.page_tokens);
  job.slot0 = slot / kChunk * kChunk;
  job.begin = slot - job.slot0;
  job.end = job.begin + static_cast<int>(pos_end - pos_begin);
  job.region = pool + static_cast<size_t>(table[page]) * c.page_bytes +
               static_cast<size_t>(h) * c.head_bytes;
  job.x = x + (row0 * c.n_kv_heads + h) * c.dim;
  return job;
}

}  // namespace polarquant::cuda::chunk
