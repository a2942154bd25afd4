// q8_0 and q4_0 match llama.cpp's block definitions byte for byte. Expected bytes are written out
// by hand for designed blocks, and computed here from the definitions for random blocks:
//   q8_0: d = amax / 127 (fp32), stored fp16(d); q = round(x / d) as int8.
//   q4_0: m = the value of largest magnitude (sign kept; the first one on ties), d = m / -8,
//         stored fp16(d); q = min(15, trunc(x / d + 8.5)); byte j = q[j] | q[j + 16] << 4.
#include <gtest/gtest.h>

#include <polarquant/codec.h>
#include <polarquant/half.h>
#include <polarquant/rotation.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/random.h"

namespace polarquant {
namespace {

std::vector<uint8_t> encode(const char* name, const std::vector<float>& x, int dim) {
  const auto codec = make_codec(name, dim);
  std::vector<uint8_t> codes(x.size() / dim * codec->group_bytes());
  codec->encode(x.data(), x.size() / dim, codes.data());
  return codes;
}

TEST(CodecBlock, Q4_0DesignedBlockNegativeExtreme) {
  // x_j = (j - 16) / 2 for j < 16 and (j - 16) / 4 after: the extreme is -8 (j = 0), so d = 1 and
  // x / d + 8.5 = x + 8.5.
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = j < 16 ? (j - 16) / 2.0f : (j - 16) / 4.0f;
  const auto codes = encode("q4_0", x, 32);
  ASSERT_EQ(codes.size(), 18u);
  EXPECT_EQ(codes[0], 0x00);  // fp16(1.0) = 0x3c00, little-endian
  EXPECT_EQ(codes[1], 0x3c);
  for (int j = 0; j < 16; ++j) {
    const int lo = int(x[j] + 8.5f), hi = int(x[j + 16] + 8.5f);
    EXPECT_EQ(codes[2 + j], lo | hi << 4) << j;
  }
  EXPECT_EQ(codes[2], 0x80);  // x0 = -8 -> 0, x16 = 0 -> 8
}

TEST(CodecBlock, Q4_0DesignedBlockPositiveExtremeFlipsTheScale) {
  // The largest magnitude is +4 (j = 31), so d = -0.5 and q = min(15, trunc(-2 x + 8.5)).
  std::vector<float> x(32, 0.0f);
  x[31] = 4.0f;
  x[0] = -3.5f;
  x[1] = 1.25f;
  const auto codes = encode("q4_0", x, 32);
  EXPECT_EQ(float_to_half(-0.5f), uint16_t(codes[0] | codes[1] << 8));
  EXPECT_EQ(codes[2] & 0x0f, 15);   // -2 * -3.5 + 8.5 = 15.5 -> 15
  EXPECT_EQ(codes[3] & 0x0f, 6);    // -2.5 + 8.5 = 6
  EXPECT_EQ(codes[17] >> 4, 0);     // -8 + 8.5 = 0.5 -> 0
  EXPECT_EQ(codes[4], 8 | 8 << 4);  // zeros -> 8
  // Decoding: (q - 8) * d gives the extreme back exactly.
  const auto codec = make_codec("q4_0", 32);
  std::vector<float> y(32);
  codec->decode(codes.data(), 1, y.data());
  EXPECT_EQ(y[31], 4.0f);
  EXPECT_EQ(y[0], -3.5f);
}

TEST(CodecBlock, Q8_0DesignedBlock) {
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = (j - 10) * 0.25f;  // amax 5.25 at j = 31
  const auto codes = encode("q8_0", x, 32);
  ASSERT_EQ(codes.size(), 34u);
  const float d = 5.25f / 127.0f;
  EXPECT_EQ(uint16_t(codes[0] | codes[1] << 8), float_to_half(d));
  EXPECT_EQ(int8_t(codes[2 + 31]), 127);
  EXPECT_EQ(int8_t(codes[2 + 0]), -60);  // -2.5 / d = -60.476 -> -60
  EXPECT_EQ(int8_t(codes[2 + 10]), 0);
}

// Regression (fuzz/cache_file_fuzz): a block of subnormal values has a scale whose reciprocal
// overflows; it used to convert +-inf to an integer (undefined behaviour, garbage codes in q4_0).
// It now codes as zeros, which is what its fp16 scale (0) decodes to anyway.
TEST(CodecBlock, SubnormalBlocksCodeAsZeros) {
  std::vector<float> x(32, 0.0f);
  x[0] = -1e-40f;
  x[5] = 3e-41f;
  const auto q4 = encode("q4_0", x, 32);
  ASSERT_EQ(q4.size(), 18u);
  EXPECT_EQ(q4[0], 0);  // fp16 scale 0
  EXPECT_EQ(q4[1], 0);
  for (size_t j = 2; j < q4.size(); ++j) EXPECT_EQ(q4[j], 0x88) << j;  // code 8 = zero
  const auto q8 = encode("q8_0", x, 32);
  for (uint8_t b : q8) EXPECT_EQ(b, 0);
  for (const char* name : {"q4_0", "q8_0", "q4_0h", "q8_0h"}) {
    const auto codec = make_codec(name, 32);
    std::vector<uint8_t> codes(codec->group_bytes());
    codec->encode(x.data(), 1, codes.data());
    std::vector<float> back(32, 1.0f);
    codec->decode(codes.data(), 1, back.data());
    for (float v : back) EXPECT_EQ(v, 0.0f) << name;
  }
}

TEST(CodecBlock, RandomBlocksMatchTheDefinition) {
  Rng rng(99);
  const int dim = 128;
  std::vector<float> x(16 * dim);
  for (float& v : x) v = float(rng.gaussian() * (1 + rng.below(4)));
  const auto q8 = encode("q8_0", x, dim), q4 = encode("q4_0", x, dim);
  ASSERT_EQ(q8.size(), x.size() / 32 * 34);
  ASSERT_EQ(q4.size(), x.size() / 32 * 18);
  for (size_t b = 0; b < x.size() / 32; ++b) {
    const float* v = &x[b * 32];
    float amax = 0, m = 0;
    for (int j = 0; j < 32; ++j) {
      if (std::fabs(v[j]) > amax) amax = std::fabs(v[j]), m = v[j];
    }
    const float d8 = amax / 127, d4 = m / -8;
    const uint8_t* b8 = &q8[b * 34];
    const uint8_t* b4 = &q4[b * 18];
    ASSERT_EQ(uint16_t(b8[0] | b8[1] << 8), float_to_half(d8));
    ASSERT_EQ(uint16_t(b4[0] | b4[1] << 8), float_to_half(d4));
    for (int j = 0; j < 32; ++j) ASSERT_EQ(int8_t(b8[2 + j]), std::round(v[j] * (1 / d8))) << b;
    for (int j = 0; j < 16; ++j) {
      const int lo = std::min(15, int(v[j] * (1 / d4) + 8.5f));
      const int hi = std::min(15, int(v[j + 16] * (1 / d4) + 8.5f));
      ASSERT_EQ(b4[2 + j], lo | hi << 4) << b << " " << j;
    }
  }
}

TEST(CodecBlock, RotatedVariantsQuantizeTheHadamardRotatedVector) {
  const int dim = 64;
  Rng rng(5);
  std::vector<float> x(4 * dim), y(x.size());
  for (float& v : x) v = float(rng.gaussian());
  const Rotation rotation(RotationKind::kHadamard, dim, kDefaultSeed);
  rotation.forward(x.data(), y.data(), 4);
  EXPECT_EQ(encode("q4_0h", x, dim), encode("q4_0", y, dim));
  EXPECT_EQ(encode("q8_0h", x, dim), encode("q8_0", y, dim));
}

TEST(CodecBlock, HadamardHelpsOnOutlierChannels) {
  // One channel 30x larger per 32-block inflates every block scale it touches; spreading it with
  // the rotation lowers the error of q4_0.
  const int dim = 128;
  Rng rng(8);
  std::vector<float> x(256 * dim);
  for (size_t i = 0; i < x.size(); ++i)
    x[i] = float(rng.gaussian()) * (i % dim == 3 ? 30.0f : 1.0f);
  auto nmse = [&](const char* name) {
    const auto codec = make_codec(name, dim);
    const auto codes = encode(name, x, dim);
    std::vector<float> y(x.size());
    codec->decode(codes.data(), 256, y.data());
    double num = 0, den = 0;
    for (size_t i = 0; i < x.size(); ++i) num += (x[i] - y[i]) * (x[i] - y[i]), den += x[i] * x[i];
    return num / den;
  };
  EXPECT_LT(nmse("q4_0h"), nmse("q4_0"));
}

}  // namespace
}  // namespace polarquant
