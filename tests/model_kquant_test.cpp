// Q5_0 and the K-quants (Q4_K, Q5_K, Q6_K): the scalar decoders against values that the `gguf`
// Python package's dequantizer (gguf.quants.dequantize, 0.17) gives for the same bytes, and the
// matmul's decode path held to the row reference for them.
#include "model/ggml_types.h"
#include "model/matmul.h"

#include <polarquant/error.h>
#include <polarquant/half.h>

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace polarquant::model {
namespace {

// The same byte stream as the Python generator: a 64-bit LCG, top byte of each state.
std::vector<uint8_t> lcg_bytes(size_t n, uint64_t seed) {
  std::vector<uint8_t> out(n);
  uint64_t x = seed;
  for (auto& b : out) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    b = static_cast<uint8_t>(x >> 56);
  }
  return out;
}

struct Vector {
  GgmlType type;
  size_t block_bytes;
  std::vector<std::pair<size_t, float>> fp16_fields;  // (offset, value of block 0; block b: (b+1)x)
  std::vector<float> expected;                        // values at kIndex
  double sum;
};

// Two blocks of LCG bytes (seed 12345) with the fp16 scale fields set to finite values; expected
// values printed by gguf.quants.dequantize (scripts/kquant_vectors.py).
std::vector<size_t> indices(size_t n) {
  return {0, 1, 17, 31, 40, n / 2 + 3, n - 2, n - 1};
}

const Vector kVectors[] = {
    {GgmlType::kQ5_0,
     22,
     {{0, 0.125f}},
     {-0.625f, 0.5f, 0.75f, 0.125f, 3.0f, -2.0f, 0.5f, -4.0f},
     -12.0},
    {GgmlType::kQ4_K,
     144,
     {{0, 0.0625f}, {2, 0.03125f}},
     {10.1875f, 17.3125f, 7.8125f, 1.875f, 7.875f, 49.3125f, 1.5f, 4.5f},
     11328.625},
    {GgmlType::kQ5_K,
     176,
     {{0, 0.0625f}, {2, 0.03125f}},
     {23.25f, 30.375f, 20.875f, 14.9375f, 20.0625f, 117.75f, 24.75f, 26.0f},
     20204.75},
    {GgmlType::kQ6_K,
     210,
     {{208, 0.0078125f}},
     {-8.71875f, 21.0703125f, -0.8828125f, -21.1875f, 6.2890625f, 4.125f, 7.875f, -18.0f},
     984.640625},
};

std::vector<uint8_t> test_row(const Vector& v) {
  std::vector<uint8_t> raw = lcg_bytes(2 * v.block_bytes, 12345);
  for (int b = 0; b < 2; ++b) {
    for (const auto& [off, value] : v.fp16_fields) {
      const uint16_t h = float_to_half(value * static_cast<float>(b + 1));
      std::memcpy(raw.data() + b * v.block_bytes + off, &h, 2);
    }
  }
  return raw;
}

TEST(KQuant, BlockSizesMatchGgml) {
  EXPECT_EQ(row_bytes(GgmlType::kQ5_0, 64), 44u);
  EXPECT_EQ(row_bytes(GgmlType::kQ4_K, 512), 288u);
  EXPECT_EQ(row_bytes(GgmlType::kQ5_K, 256), 176u);
  EXPECT_EQ(row_bytes(GgmlType::kQ6_K, 1024), 840u);
  EXPECT_EQ(type_name(12), "Q4_K");
  EXPECT_EQ(type_name(14), "Q6_K");
  // A K-quant row must hold whole super-blocks of 256.
  EXPECT_THROW(row_bytes(GgmlType::kQ4_K, 640), Error);
}

TEST(KQuant, DequantizeMatchesGgufPython) {
  for (const Vector& v : kVectors) {
    const std::vector<uint8_t> row = test_row(v);
    const int64_t n = static_cast<int64_t>(2 * type_info(static_cast<uint32_t>(v.type)).block_size);
    ASSERT_EQ(row_bytes(v.type, n), row.size());
    std::vector<float> out(static_cast<size_t>(n));
    dequantize_row_ref(v.type, row.data(), out.data(), n);
    const auto idx = indices(static_cast<size_t>(n));
    for (size_t i = 0; i < idx.size(); ++i) {
      EXPECT_EQ(out[idx[i]], v.expected[i])
          << type_name(static_cast<uint32_t>(v.type)) << " value " << idx[i];
    }
    double sum = 0.0;
    for (float x : out) sum += x;
    EXPECT_EQ(sum, v.sum) << type_name(static_cast<uint32_t>(v.type));
  }
}

TEST(KQuant, MatmulDecodesLikeTheReference) {
  for (const Vector& v : kVectors) {
    const int64_t block = type_info(static_cast<uint32_t>(v.type)).block_size;
    const int64_t cols = 2 * block, rows = 3;
    std::vector<uint8_t> data;
    for (int r = 0; r < rows; ++r) {
      std::vector<uint8_t> row = test_row(v);
      row[5] = static_cast<uint8_t>(row[5] + r);  // rows differ
      data.insert(data.end(), row.begin(), row.end());
    }
    const WeightMatrix w = make_weight_matrix(v.type, data.data(), rows, cols);
    std::vector<float> x(static_cast<size_t>(2 * cols));
    for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.1f * static_cast<float>(i));
    std::vector<float> y(2 * rows), y_ref(2 * rows);
    matmul(w, x.data(), 2, y.data(), 1);
    matmul_ref(w, x.data(), 2, y_ref.data());
    for (size_t i = 0; i < y.size(); ++i)
      EXPECT_NEAR(y[i], y_ref[i], 1e-4 * (1.0 + std::fabs(y_ref[i])));
    std::vector<float> rows_out(static_cast<size_t>(rows * cols)), ref(static_cast<size_t>(cols));
    dequantize_rows(w, 0, rows, rows_out.data());
    for (int64_t r = 0; r < rows; ++r) {
      dequantize_row_ref(v.type, w.row(r), ref.data(), cols);
      for (int64_t j = 0; j < cols; ++j) ASSERT_EQ(rows_out[r * cols + j], ref[j]);
    }
  }
}

TEST(KQuant, QuantizingAReadOnlyTypeIsRefused) {
  std::vector<float> x(256, 1.0f);
  std::vector<uint8_t> row(row_bytes(GgmlType::kQ4_K, 256));
  try {
    quantize_row_ref(GgmlType::kQ4_K, x.data(), row.data(), 256);
    FAIL() << "expected Unsupported";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("Q4_K"), std::string::npos);
  }
}

}  // namespace
}  // namespace polarquant::model
