// Quantized weight formats and the SIMD/threaded matmul, held to the scalar references.
#include "model/ggml_types.h"
#include "model/matmul.h"

#include <polarquant/error.h>

#include <gtest/gtest.h>

#include <cmath>
#include <random>

namespace polarquant::model {
namespace {

const GgmlType kTypes[] = {GgmlType::kF32,  GgmlType::kF16,  GgmlType::kBF16,
                           GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ8_0};

std::vector<float> gaussian(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = g(rng);
  return v;
}

std::vector<uint8_t> quantize_matrix(GgmlType type, const std::vector<float>& w, int64_t rows,
                                     int64_t cols) {
  const size_t rb = row_bytes(type, cols);
  std::vector<uint8_t> out(rb * rows);
  for (int64_t r = 0; r < rows; ++r)
    quantize_row_ref(type, w.data() + r * cols, out.data() + r * rb, cols);
  return out;
}

// Round trip error per element is bounded by half a quantization step (4-bit: range/30, 8-bit:
// amax/254) plus the fp16 rounding of the scale, or the float format's relative precision.
TEST(ModelQuant, RoundTripWithinHalfAStep) {
  const auto x = gaussian(32 * 8, 1);
  for (GgmlType type : kTypes) {
    const auto q = quantize_matrix(type, x, 1, static_cast<int64_t>(x.size()));
    std::vector<float> y(x.size());
    dequantize_row_ref(type, q.data(), y.data(), static_cast<int64_t>(x.size()));
    for (size_t b = 0; b < x.size() / 32; ++b) {
      float lo = 1e9f, hi = -1e9f, amax = 0.0f;
      for (int j = 0; j < 32; ++j) {
        lo = std::min(lo, x[b * 32 + j]);
        hi = std::max(hi, x[b * 32 + j]);
        amax = std::max(amax, std::fabs(x[b * 32 + j]));
      }
      for (int j = 0; j < 32; ++j) {
        const size_t i = b * 32 + j;
        float bound = 0.0f;
        switch (type) {
          case GgmlType::kF32:
            bound = 0.0f;
            break;
          case GgmlType::kF16:
            bound = std::fabs(x[i]) * 1e-3f;
            break;
          case GgmlType::kBF16:
            bound = std::fabs(x[i]) * 4e-3f;
            break;
          // The largest magnitude maps to -8, so its mirror image clamps at +7: a whole step there.
          case GgmlType::kQ4_0:
            bound = amax / 8.0f * 1.01f;
            break;
          case GgmlType::kQ4_1:
            bound = (hi - lo) / 15.0f * 0.5f * 1.01f + 1e-3f * std::fabs(lo);
            break;
          case GgmlType::kQ8_0:
            bound = amax / 127.0f * 0.5f * 1.01f;
            break;
          default:  // read-only types (model_kquant_test.cpp) are not in kTypes
            FAIL() << "no bound for " << type_name(static_cast<uint32_t>(type));
        }
        // The fp16 scale itself is rounded (relative 2^-11), which moves every value by up to that.
        if (type != GgmlType::kF32) bound += std::fabs(x[i]) * 1e-3f;
        ASSERT_LE(std::fabs(y[i] - x[i]), bound + 1e-6f)
            << type_name(static_cast<uint32_t>(type)) << " " << i;
      }
    }
  }
}

TEST(ModelQuant, SimdDequantizeIsBitExact) {
  const int64_t rows = 5, cols = 96;
  const auto x = gaussian(rows * cols, 2, 3.0f);
  for (GgmlType type : kTypes) {
    const auto q = quantize_matrix(type, x, rows, cols);
    const WeightMatrix w = make_weight_matrix(type, q.data(), rows, cols);
    std::vector<float> simd(rows * cols), ref(rows * cols);
    dequantize_rows(w, 0, rows, simd.data());
    for (int64_t r = 0; r < rows; ++r)
      dequantize_row_ref(type, w.row(r), ref.data() + r * cols, cols);
    for (size_t i = 0; i < simd.size(); ++i) {
      ASSERT_EQ(simd[i], ref[i]) << type_name(static_cast<uint32_t>(type)) << " at " << i;
    }
  }
}

// The fast matmul sums in float with a different order than the double reference: the tolerance is
// a few float epsilons times the sum of |w||x| (the worst-case rounding of any summation order).
TEST(ModelMatmul, MatchesScalarReference) {
  struct Shape {
    int64_t rows, cols;
    size_t tokens;
  };
  const Shape shapes[] = {{1, 32, 1},  {3, 32, 5},    {17, 64, 4},
                          {16, 96, 9}, {37, 160, 70}, {64, 1536, 3}};
  for (GgmlType type : kTypes) {
    for (const Shape& s : shapes) {
      const auto wf = gaussian(s.rows * s.cols, 3);
      const auto x = gaussian(s.tokens * s.cols, 4);
      const auto q = quantize_matrix(type, wf, s.rows, s.cols);
      const WeightMatrix w = make_weight_matrix(type, q.data(), s.rows, s.cols);
      std::vector<float> got(s.tokens * s.rows), ref(s.tokens * s.rows), deq(s.rows * s.cols);
      for (int threads : {1, 2}) {
        matmul(w, x.data(), s.tokens, got.data(), threads);
        matmul_ref(w, x.data(), s.tokens, ref.data());
        dequantize_rows(w, 0, s.rows, deq.data());
        for (size_t t = 0; t < s.tokens; ++t) {
          for (int64_t r = 0; r < s.rows; ++r) {
            double mag = 0.0;
            for (int64_t k = 0; k < s.cols; ++k)
              mag += std::fabs(deq[r * s.cols + k] * x[t * s.cols + k]);
            const float tol = static_cast<float>(mag) * 8.0f * 1.2e-7f *
                              std::log2(static_cast<float>(s.cols) + 1);
            ASSERT_NEAR(got[t * s.rows + r], ref[t * s.rows + r], tol + 1e-6f)
                << type_name(static_cast<uint32_t>(type)) << " rows " << s.rows << " cols "
                << s.cols << " token " << t << " row " << r << " threads " << threads;
          }
        }
      }
    }
  }
}

// Float weights accept any row length: the SIMD loop's scalar tail must be exercised.
TEST(ModelMatmul, F32TailsMatchReference) {
  for (int64_t cols : {1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 172}) {
    const int64_t rows = 6;
    const size_t tokens = 5;
    const auto wf = gaussian(rows * cols, 5);
    const auto x = gaussian(tokens * cols, 6);
    const WeightMatrix w =
        make_weight_matrix(GgmlType::kF32, reinterpret_cast<const uint8_t*>(wf.data()), rows, cols);
    std::vector<float> got(tokens * rows), ref(tokens * rows);
    matmul(w, x.data(), tokens, got.data(), 2);
    matmul_ref(w, x.data(), tokens, ref.data());
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_NEAR(got[i], ref[i], 1e-4f * std::sqrt(cols)) << cols;
  }
}

TEST(ModelMatmul, BadShapesAreRefused) {
  std::vector<uint8_t> buf(64);
  EXPECT_THROW(make_weight_matrix(GgmlType::kQ4_0, buf.data(), 1, 31), Error);
  EXPECT_THROW(make_weight_matrix(GgmlType::kF32, buf.data(), 0, 4), Error);
  const WeightMatrix w = make_weight_matrix(GgmlType::kF32, buf.data(), 2, 4);
  std::vector<float> out(16);
  EXPECT_THROW(dequantize_rows(w, 1, 2, out.data()), Error);
  std::vector<float> nan(32, std::nanf(""));
  EXPECT_THROW(quantize_row_ref(GgmlType::kQ8_0, nan.data(), buf.data(), 32), Error);
}

}  // namespace
}  // namespace polarquant::model
