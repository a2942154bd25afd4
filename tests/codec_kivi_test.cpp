// KIVI: keys grouped per channel over 32 tokens, values per token over 32 channels, asymmetric
// min/max with fp16 scale and minimum.
#include <gtest/gtest.h>

#include <polarquant/codec.h>
#include <polarquant/half.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/random.h"

namespace polarquant {
namespace {

std::vector<float> round_trip(const Codec& codec, const std::vector<float>& x) {
  const size_t groups = x.size() / codec.dim() / codec.group_size();
  std::vector<uint8_t> codes(groups * codec.group_bytes());
  codec.encode(x.data(), groups, codes.data());
  std::vector<float> y(x.size());
  codec.decode(codes.data(), groups, y.data());
  return y;
}

TEST(CodecKivi, KeysGroupTokensPerChannel) {
  const auto codec = make_codec("kivi2k", 64);
  EXPECT_EQ(codec->group_size(), 32);
  EXPECT_EQ(codec->group_bytes(), 64u * (2 + 2 + 8));  // scale, minimum, 32 two-bit codes
}

TEST(CodecKivi, GridValuesAreExact) {
  // Channel c of the key group takes values c/8 + q * 0.25, q in 0..3 with both ends present:
  // minimum and scale are fp16-exact, so 2-bit KIVI reproduces them exactly.
  const int dim = 16;
  std::vector<float> x(32 * dim);
  for (int t = 0; t < 32; ++t) {
    for (int c = 0; c < dim; ++c) x[t * dim + c] = c / 8.0f + ((t + c) % 4) * 0.25f;
  }
  EXPECT_EQ(round_trip(*make_codec("kivi2k", dim), x), x);
  // The same grid along channels, for values (groups of 32 channels per token).
  std::vector<float> v(4 * 64);
  for (int t = 0; t < 4; ++t) {
    for (int c = 0; c < 64; ++c) v[t * 64 + c] = t + ((c * 7 + t) % 16) * 0.125f;
  }
  EXPECT_EQ(round_trip(*make_codec("kivi4v", 64), v), v);
}

TEST(CodecKivi, ErrorWithinHalfAStep) {
  Rng rng(3);
  const int dim = 64;
  std::vector<float> x(64 * dim);
  for (float& v : x) v = float(rng.gaussian());
  for (int bits : {2, 4}) {
    const auto keys = make_codec("kivi" + std::to_string(bits) + "k", dim);
    const auto y = round_trip(*keys, x);
    for (int g = 0; g < 2; ++g) {
      for (int c = 0; c < dim; ++c) {
        float lo = INFINITY, hi = -INFINITY;
        for (int t = 0; t < 32; ++t)
          lo = std::min(lo, x[(g * 32 + t) * dim + c]),
          hi = std::max(hi, x[(g * 32 + t) * dim + c]);
        // Half a step, plus the fp16 rounding of the minimum and of the scale (relative 2^-11 each,
        // the scale's error multiplied by at most 2^bits - 1 steps).
        const float step = (hi - lo) / float((1 << bits) - 1);
        const float bound = 0.5f * step + std::fabs(lo) * 1e-3f + (hi - lo) * 1e-3f;
        for (int t = 0; t < 32; ++t) {
          const size_t i = (g * 32 + t) * dim + c;
          ASSERT_LE(std::fabs(x[i] - y[i]), bound) << bits << " bits, channel " << c;
        }
      }
    }
  }
}

TEST(CodecKivi, KeyOutlierChannelStaysInItsChannel) {
  // Per-channel grouping: scaling one channel 100x must leave every other channel's reconstruction
  // unchanged, bit for bit.
  Rng rng(4);
  const int dim = 64;
  std::vector<float> x(32 * dim);
  for (float& v : x) v = float(rng.gaussian());
  auto x2 = x;
  for (int t = 0; t < 32; ++t) x2[t * dim + 9] *= 100.0f;
  const auto codec = make_codec("kivi4k", dim);
  const auto y = round_trip(*codec, x), y2 = round_trip(*codec, x2);
  for (int t = 0; t < 32; ++t) {
    for (int c = 0; c < dim; ++c) {
      if (c != 9) {
        ASSERT_EQ(y[t * dim + c], y2[t * dim + c]);
      }
    }
  }
}

TEST(CodecKivi, ValueOutlierStaysInItsChannelGroup) {
  Rng rng(5);
  const int dim = 80;  // groups 0..31, 32..63, and a short 64..79
  std::vector<float> x(3 * dim);
  for (float& v : x) v = float(rng.gaussian());
  auto x2 = x;
  x2[dim + 40] *= 100.0f;  // token 1, second group
  const auto codec = make_codec("kivi2v", dim);
  EXPECT_EQ(codec->group_bytes(), 2u * (4 + 8) + (4 + 4));
  const auto y = round_trip(*codec, x), y2 = round_trip(*codec, x2);
  int changed = 0;
  for (int i = 0; i < 3 * dim; ++i) {
    const bool same_group = i / dim == 1 && (i % dim) / 32 == 1;
    if (!same_group) {
      ASSERT_EQ(y[i], y2[i]) << i;
    }
    changed += y[i] != y2[i];
  }
  EXPECT_GT(changed, 0);
}

}  // namespace
}  // namespace polarquant
