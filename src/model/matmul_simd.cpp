// SIMD kernels of matmul.cpp, compiled once per x86 target by Highway and dispatched at run time
// (the best target the CPU supports is chosen once per call, not per element).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "model/matmul_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/highway.h>

#include "model/matmul.h"

#include <polarquant/half.h>

#include <cstring>

HWY_BEFORE_NAMESPACE();
namespace polarquant::model {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Decodes quantized blocks with the same operation order as dequantize_row_ref (multiply, then add,
// no fused multiply-add), so the results are bit-identical.
void DequantizeRows(GgmlType type, const uint8_t* data, size_t row_stride, int64_t n_rows,
                    int64_t cols, float* out) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<int32_t, decltype(df)> di;
  const hn::Rebind<int8_t, decltype(df)> d8;
  const hn::Rebind<uint8_t, decltype(df)> du8;
  const size_t N = hn::Lanes(df);
  const bool simd_ok = N <= 16 && 16 % N == 0;
  for (int64_t r = 0; r < n_rows; ++r) {
    const uint8_t* row = data + static_cast<size_t>(r) * row_stride;
    float* o = out + r * cols;
    const int64_t nb = cols / kQuantBlock;
    if (!simd_ok ||
        (type != GgmlType::kQ4_0 && type != GgmlType::kQ4_1 && type != GgmlType::kQ8_0)) {
      dequantize_row_ref(type, row, o, cols);
      continue;
    }
    if (type == GgmlType::kQ8_0) {
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + b * sizeof(BlockQ8_0);
        uint16_t dh;
        std::memcpy(&dh, blk, 2);
        const auto d = hn::Set(df, half_to_float(dh));
        const int8_t* qs = reinterpret_cast<const int8_t*>(blk + 2);
        for (size_t j = 0; j < 32; j += N) {
          const auto q = hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(d8, qs + j)));
          hn::StoreU(hn::Mul(d, q), df, o + b * 32 + j);
        }
      }
    } else {
      const bool has_min = type == GgmlType::kQ4_1;
      const size_t blk_bytes = has_min ? sizeof(BlockQ4_1) : sizeof(BlockQ4_0);
      const auto mask = hn::Set(di, 0xF);
      const auto eight = hn::Set(di, has_min ? 0 : 8);
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + b * blk_bytes;
        uint16_t dh, mh = 0;
        std::memcpy(&dh, blk, 2);
        if (has_min) std::memcpy(&mh, blk + 2, 2);
        const auto d = hn::Set(df, half_to_float(dh));
        const auto m = hn::Set(df, half_to_float(mh));
        const uint8_t* qs = blk + (has_min ? 4 : 2);
        for (size_t j = 0; j < 16; j += N) {
          const auto bytes = hn::PromoteTo(di, hn::LoadU(du8, qs + j));
          const auto lo = hn::ConvertTo(df, hn::Sub(hn::And(bytes, mask), eight));
          const auto hi = hn::ConvertTo(df, hn::Sub(hn::ShiftRight<4>(bytes), eight));
          if (has_min) {
            hn::StoreU(hn::Add(hn::Mul(d, lo), m), df, o + b * 32 + j);
            hn::StoreU(hn::Add(hn::Mul(d, hi), m), df, o + b * 32 + 16 + j);
          } else {
            hn::StoreU(hn::Mul(d, lo), df, o + b * 32 + j);
            hn::StoreU(hn::Mul(d, hi), df, o + b * 32 + 16 + j);
          }
        }
      }
    }
  }
}

// One dot product (used for the edges of the tile).
float Dot(const float* a, const float* b, int64_t n) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  auto acc = hn::Zero(df);
  int64_t k = 0;
  for (; k + N <= n; k += N) acc = hn::MulAdd(hn::LoadU(df, a + k), hn::LoadU(df, b + k), acc);
  float sum = hn::GetLane(hn::SumOfLanes(df, acc));
  for (; k < n; ++k) sum += a[k] * b[k];
  return sum;
}

// 4 weight rows x 4 tokens per step: 8 loads feed 16 FMAs, so the loop is bound by arithmetic, not
// by loads.
void DotTile(const float* w, int64_t n_rows, int64_t cols, const float* x, int64_t x_stride,
             int64_t n_tokens, float* y, int64_t y_stride) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const int64_t full = cols / N * N;
  int64_t t = 0;
  for (; t + 4 <= n_tokens; t += 4) {
    const float* x0 = x + t * x_stride;
    const float* x1 = x0 + x_stride;
    const float* x2 = x1 + x_stride;
    const float* x3 = x2 + x_stride;
    int64_t r = 0;
    for (; r + 4 <= n_rows; r += 4) {
      const float* w0 = w + r * cols;
      const float* w1 = w0 + cols;
      const float* w2 = w1 + cols;
      const float* w3 = w2 + cols;
      auto a00 = hn::Zero(df), a01 = hn::Zero(df), a02 = hn::Zero(df), a03 = hn::Zero(df);
      auto a10 = hn::Zero(df), a11 = hn::Zero(df), a12 = hn::Zero(df), a13 = hn::Zero(df);
      auto a20 = hn::Zero(df), a21 = hn::Zero(df), a22 = hn::Zero(df), a23 = hn::Zero(df);
      auto a30 = hn::Zero(df), a31 = hn::Zero(df), a32 = hn::Zero(df), a33 = hn::Zero(df);
      for (int64_t k = 0; k < full; k += N) {
        const auto v0 = hn::LoadU(df, w0 + k), v1 = hn::LoadU(df, w1 + k);
        const auto v2 = hn::LoadU(df, w2 + k), v3 = hn::LoadU(df, w3 + k);
        auto u = hn::LoadU(df, x0 + k);
        a00 = hn::MulAdd(v0, u, a00);
        a01 = hn::MulAdd(v1, u, a01);
        a02 = hn::MulAdd(v2, u, a02);
        a03 = hn::MulAdd(v3, u, a03);
        u = hn::LoadU(df, x1 + k);
        a10 = hn::MulAdd(v0, u, a10);
        a11 = hn::MulAdd(v1, u, a11);
        a12 = hn::MulAdd(v2, u, a12);
        a13 = hn::MulAdd(v3, u, a13);
        u = hn::LoadU(df, x2 + k);
        a20 = hn::MulAdd(v0, u, a20);
        a21 = hn::MulAdd(v1, u, a21);
        a22 = hn::MulAdd(v2, u, a22);
        a23 = hn::MulAdd(v3, u, a23);
        u = hn::LoadU(df, x3 + k);
        a30 = hn::MulAdd(v0, u, a30);
        a31 = hn::MulAdd(v1, u, a31);
        a32 = hn::MulAdd(v2, u, a32);
        a33 = hn::MulAdd(v3, u, a33);
      }
      const float* xs[4] = {x0, x1, x2, x3};
      const float* ws[4] = {w0, w1, w2, w3};
      float sums[4][4] = {
          {hn::GetLane(hn::SumOfLanes(df, a00)), hn::GetLane(hn::SumOfLanes(df, a01)),
           hn::GetLane(hn::SumOfLanes(df, a02)), hn::GetLane(hn::SumOfLanes(df, a03))},
          {hn::GetLane(hn::SumOfLanes(df, a10)), hn::GetLane(hn::SumOfLanes(df, a11)),
           hn::GetLane(hn::SumOfLanes(df, a12)), hn::GetLane(hn::SumOfLanes(df, a13))},
          {hn::GetLane(hn::SumOfLanes(df, a20)), hn::GetLane(hn::SumOfLanes(df, a21)),
           hn::GetLane(hn::SumOfLanes(df, a22)), hn::GetLane(hn::SumOfLanes(df, a23))},
          {hn::GetLane(hn::SumOfLanes(df, a30)), hn::GetLane(hn::SumOfLanes(df, a31)),
           hn::GetLane(hn::SumOfLanes(df, a32)), hn::GetLane(hn::SumOfLanes(df, a33))}};
      for (int i = 0; i < 4; ++i) {
        for (int j = 0; j < 4; ++j) {
          float s = sums[i][j];
          for (int64_t k = full; k < cols; ++k) s += ws[j][k] * xs[i][k];
          y[(t + i) * y_stride + r + j] = s;
        }
      }
    }
    for (; r < n_rows; ++r) {
      for (int i = 0; i < 4; ++i)
        y[(t + i) * y_stride + r] = Dot(w + r * cols, x + (t + i) * x_stride, cols);
    }
  }
  for (; t < n_tokens; ++t) {
    for (int64_t r = 0; r < n_rows; ++r)
      y[t * y_stride + r] = Dot(w + r * cols, x + t * x_stride, cols);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace polarquant::model
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace polarquant::model {
HWY_EXPORT(DequantizeRows);
HWY_EXPORT(DotTile);

namespace detail {
void dequantize_rows_simd(GgmlType type, const uint8_t* data, size_t row_stride, int64_t n_rows,
                          int64_t cols, float* out) {
  HWY_DYNAMIC_DISPATCH(DequantizeRows)(type, data, row_stride, n_rows, cols, out);
}
void dot_tile_simd(const float* w, int64_t n_rows, int64_t cols, const float* x, int64_t x_stride,
                   int64_t n_tokens, float* y, int64_t y_stride) {
  HWY_DYNAMIC_DISPATCH(DotTile)(w, n_rows, cols, x, x_stride, n_tokens, y, y_stride);
}
}  // namespace detail
}  // namespace polarquant::model
#endif
