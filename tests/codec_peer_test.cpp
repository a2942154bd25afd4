// Properties every peer codec must have: exact bit accounting, round trip within a bound, zero
// vectors, determinism, refusal of bad input, and more bits never giving more error in a family.
#include <gtest/gtest.h>

#include <polarquant/codec.h>
#include <polarquant/codec_pair.h>
#include <polarquant/error.h>

#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "codecs/peer_codecs.h"
#include "core/random.h"
#include "eval/distortion.h"

namespace polarquant {
namespace {

std::vector<float> gaussian(size_t count, uint64_t seed, float scale = 1.0f) {
  Rng rng(seed);
  std::vector<float> x(count);
  for (float& v : x) v = scale * static_cast<float>(rng.gaussian());
  return x;
}

double nmse(const std::vector<float>& x, const std::vector<float>& y) {
  return polarquant::nmse(x.data(), y.data(), x.size());
}

// Round trip of n_groups groups of Gaussian vectors; returns the NMSE.
double round_trip_nmse(const Codec& codec, size_t n_groups, uint64_t seed) {
  const size_t n = n_groups * codec.group_size();
  const auto x = gaussian(n * codec.dim(), seed);
  std::vector<uint8_t> codes(n_groups * codec.group_bytes());
  codec.encode(x.data(), n_groups, codes.data());
  std::vector<float> y(x.size());
  codec.decode(codes.data(), n_groups, y.data());
  return nmse(x, y);
}

// Bits per coordinate of each peer codec at d = 128, from the method definitions
// (docs/design/peers.md).
const std::map<std::string, double> kBits128 = {{"bf16", 16.0},
                                                {"q8_0", 8.5},
                                                {"q8_0h", 8.5},
                                                {"q4_0", 4.5},
                                                {"q4_0h", 4.5},
                                                {"kivi4k", 5.0},
                                                {"kivi4v", 5.0},
                                                {"kivi2k", 3.0},
                                                {"kivi2v", 3.0},
                                                {"qjl", 2.0 + 16.0 / 128},
                                                {"turbo4", 4.0 + 16.0 / 128},
                                                {"turbo3", 3.0 + 16.0 / 128},
                                                {"turbo2", 2.0 + 16.0 / 128}};

// Loose NMSE ceilings on Gaussian data: a broken codec misses them by orders of magnitude.
const std::map<std::string, double> kMaxNmse = {
    {"bf16", 1e-5},    {"q8_0", 1e-4},   {"q8_0h", 1e-4}, {"q4_0", 2e-2},  {"q4_0h", 2e-2},
    {"kivi4k", 1e-2},  {"kivi4v", 1e-2}, {"kivi2k", 0.2}, {"kivi2v", 0.2}, {"qjl", 1.5},
    {"turbo4", 0.012}, {"turbo3", 0.04}, {"turbo2", 0.13}};

class PeerCodec : public ::testing::TestWithParam<std::string> {};

TEST_P(PeerCodec, BitAccountingIsExact) {
  const auto codec = make_codec(GetParam(), 128);
  EXPECT_EQ(codec->name(), GetParam());
  EXPECT_DOUBLE_EQ(codec->bits_per_coordinate(), kBits128.at(GetParam()));
  EXPECT_EQ(8 * codec->group_bytes(),
            size_t(kBits128.at(GetParam()) * 128 * codec->group_size() + 0.5));
}

TEST_P(PeerCodec, RoundTripWithinBound) {
  for (int dim : {64, 128, 256}) {
    const auto codec = make_codec(GetParam(), dim, 7);
    const double e = round_trip_nmse(*codec, 64 / codec->group_size() + 2, 11);
    EXPECT_LT(e, kMaxNmse.at(GetParam())) << "dim " << dim;
    EXPECT_GE(e, 0.0);
  }
}

TEST_P(PeerCodec, DeterministicAndSeeded) {
  const auto a = make_codec(GetParam(), 128, 5), b = make_codec(GetParam(), 128, 5);
  const auto x = gaussian(size_t(a->group_size()) * 128 * 2, 3);
  std::vector<uint8_t> ca(2 * a->group_bytes()), cb(ca.size());
  a->encode(x.data(), 2, ca.data());
  b->encode(x.data(), 2, cb.data());
  EXPECT_EQ(ca, cb);
}

TEST_P(PeerCodec, ZeroVectorsRoundTripToZero) {
  const auto codec = make_codec(GetParam(), 64);
  std::vector<float> x(size_t(codec->group_size()) * 64, 0.0f), y(x.size(), 1.0f);
  std::vector<uint8_t> codes(codec->group_bytes());
  codec->encode(x.data(), 1, codes.data());
  codec->decode(codes.data(), 1, y.data());
  for (float v : y) EXPECT_EQ(v, 0.0f);
}

TEST_P(PeerCodec, NonFiniteInputIsRefusedAndOutputUntouched) {
  const auto codec = make_codec(GetParam(), 64);
  for (float bad :
       {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    auto x = gaussian(size_t(codec->group_size()) * 64 * 2, 9);
    x[x.size() - 3] = bad;  // in the second group
    std::vector<uint8_t> codes(2 * codec->group_bytes(), 0xab);
    try {
      codec->encode(x.data(), 2, codes.data());
      FAIL() << "accepted a non-finite value";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("coordinate 61"), std::string::npos) << e.what();
    }
    for (uint8_t c : codes) ASSERT_EQ(c, 0xab);
  }
}

TEST_P(PeerCodec, OutOfRangeInputIsRefused) {
  const auto codec = make_codec(GetParam(), 64);
  auto x = gaussian(size_t(codec->group_size()) * 64, 4);
  x[5] = 1e38f;  // finite, but no fp16 scale or norm (nor, after rounding, bf16) can hold it
  std::vector<uint8_t> codes(codec->group_bytes());
  if (GetParam() == "bf16") x[5] = 3.4e38f;
  EXPECT_THROW(codec->encode(x.data(), 1, codes.data()), Error);
}

TEST_P(PeerCodec, CorruptStoredScaleIsRefused) {
  const auto codec = make_codec(GetParam(), 64);
  const auto x = gaussian(size_t(codec->group_size()) * 64, 4);
  std::vector<uint8_t> codes(codec->group_bytes());
  codec->encode(x.data(), 1, codes.data());
  // Every peer layout starts with a 16-bit float (scale, norm, or the first bf16 coordinate);
  // 0x7fff is NaN in both fp16 and bf16.
  codes[0] = 0xff;
  codes[1] = 0x7f;
  std::vector<float> y(x.size());
  try {
    codec->decode(codes.data(), 1, y.data());
    FAIL() << "decoded a NaN scale";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(All, PeerCodec, ::testing::ValuesIn(codecs::peer_codec_names()),
                         [](const auto& info) { return info.param; });

TEST(PeerCodecRegistry, EveryPeerNameIsRegistered) {
  const auto names = codec_names();
  for (const auto& peer : codecs::peer_codec_names()) {
    EXPECT_NE(std::find(names.begin(), names.end(), peer), names.end()) << peer;
  }
}

TEST(PeerCodecRegistry, UnsuitableDimsAreRefused) {
  EXPECT_THROW(make_codec("q4_0", 48), Error);   // not a multiple of 32
  EXPECT_THROW(make_codec("q8_0h", 96), Error);  // Hadamard needs a power of two
  EXPECT_THROW(make_codec("kivi2k", 0), Error);
  EXPECT_THROW(make_codec("turbo3", 1), Error);
  EXPECT_THROW(make_codec("qjl", -4), Error);
  try {
    make_codec("kivi2", 128);  // a pair name, not a codec: the message says what to use
    FAIL() << "make_codec accepted a pair name";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("kivi2k"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(make_codec("q8_0", 96));
  EXPECT_NO_THROW(make_codec("kivi4v", 80));  // a short last channel group
}

TEST(PeerCodecRegistry, PairsNameBothRoles) {
  EXPECT_EQ(codec_pair("kivi2").key, "kivi2k");
  EXPECT_EQ(codec_pair("kivi2").value, "kivi2v");
  EXPECT_EQ(codec_pair("qjl").value, "kivi2v");
  EXPECT_EQ(codec_pair("q4_0h").key, "q4_0h");
  EXPECT_EQ(codec_pair(kDefaultPolarPair).key, "polar-544444");
  EXPECT_EQ(codec_pair(kDefaultPolarPair).value, "polar-422222");
  // KEY/VALUE takes the key role of the first name and the value role of the second.
  EXPECT_EQ(codec_pair("kivi4/f16").key, "kivi4k");
  EXPECT_EQ(codec_pair("kivi4/f16").value, "f16");
  EXPECT_EQ(codec_pair("f16/polar4kv").value, "polar-422222");
  for (const char* bad : {"/f16", "f16/", "a/b/c"}) {
    EXPECT_THROW(codec_pair(bad), Error) << bad;
  }
  // The default pair is 4.0 bits per coordinate on average at head_dim 64.
  EXPECT_EQ(make_codec(codec_pair(kDefaultPolarPair).key, 64)->group_bytes() +
                make_codec(codec_pair(kDefaultPolarPair).value, 64)->group_bytes(),
            64u);
  const auto pairs = codec_pair_names();
  for (const auto& p : pairs) {
    EXPECT_NO_THROW(make_codec(codec_pair(p).key, 128)) << p;
    EXPECT_NO_THROW(make_codec(codec_pair(p).value, 128)) << p;
  }
  EXPECT_NE(std::find(pairs.begin(), pairs.end(), "kivi4"), pairs.end());
  EXPECT_EQ(std::find(pairs.begin(), pairs.end(), "kivi4v"), pairs.end());
}

// Within a family, a codec with more bits must not reconstruct worse, on Gaussian data and on
// key-like data (outlier channels and a channel mean).
TEST(PeerCodecFamilies, MoreBitsNeverMoreError) {
  const std::vector<std::vector<std::string>> families = {{"q4_0", "q8_0", "bf16"},
                                                          {"q4_0h", "q8_0h"},
                                                          {"kivi2k", "kivi4k"},
                                                          {"kivi2v", "kivi4v"},
                                                          {"turbo2", "turbo3", "turbo4"}};
  const int dim = 128;
  const size_t n = 256;
  for (bool keylike : {false, true}) {
    auto x = gaussian(n * dim, 21);
    if (keylike) {
      for (size_t i = 0; i < n; ++i) {
        for (int c = 0; c < dim; ++c) {
          float& v = x[i * dim + c];
          if (c % 37 == 5) v *= 10.0f;
          v += 0.5f * float(c % 7) - 1.5f;
        }
      }
    }
    for (const auto& family : families) {
      double previous = INFINITY;
      for (const auto& name : family) {
        const auto codec = make_codec(name, dim);
        const size_t groups = n / codec->group_size();
        std::vector<uint8_t> codes(groups * codec->group_bytes());
        std::vector<float> y(x.size());
        codec->encode(x.data(), groups, codes.data());
        codec->decode(codes.data(), groups, y.data());
        const double e = nmse(x, y);
        EXPECT_LT(e, previous) << name << (keylike ? " keylike" : " gaussian");
        previous = e;
      }
    }
  }
}

}  // namespace
}  // namespace polarquant
