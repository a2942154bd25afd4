#include <gtest/gtest.h>
#include <polarquant/codec.h>
#include <polarquant/error.h>
#include <polarquant/half.h>
#include <polarquant/polar_codec.h>

#include <cmath>

#include "eval/distortion_stats.h"
#include "eval/synthetic.h"

namespace polarquant {
namespace {

TEST(PolarCodec, PaperPresetBitAccountingIsExact) {
  const PolarCodec codec(polar_preset("paper", 128));
  // 8 blocks x (16 + 8*4 + 4*2 + 2*2 + 1*2) bits = 496 bits = 62 bytes.
  EXPECT_EQ(codec.config().payload_bits(), 496u);
  EXPECT_EQ(codec.group_bytes(), 62u);
  EXPECT_DOUBLE_EQ(codec.bits_per_coordinate(), 3.875);
  EXPECT_EQ(codec.name(), "paper");
}

TEST(PolarCodec, BitAccountingCountsPaddingAndRadiusPrecision) {
  PolarConfig c = polar_preset("polar37", 128);  // L=6; 4,3,3,3,3,3
  // 2 radii x 16 + 64*4 + (32+16+8+4+2)*3 = 32 + 256 + 186 = 474 bits -> 60 bytes stored.
  EXPECT_EQ(c.payload_bits(), 474u);
  EXPECT_EQ(PolarCodec(c).group_bytes(), 60u);
  EXPECT_DOUBLE_EQ(PolarCodec(c).bits_per_coordinate(), 3.75);
  c.radius = RadiusPrecision::kFp32;
  EXPECT_EQ(c.payload_bits(), 474u + 2 * 16);
  EXPECT_EQ(PolarCodec(c).group_bytes(), 64u);
}

TEST(PolarCodec, PresetsAdaptToSmallDimensions) {
  const PolarConfig c = polar_preset("paper", 8);  // head_dim 8: only 3 levels fit
  EXPECT_EQ(c.levels, 3);
  EXPECT_EQ(c.bits, (std::vector<int>{4, 2, 2}));
  EXPECT_EQ(polar_preset("polar41", 96).levels, 5);  // 96 = 3 * 32
  EXPECT_THROW(polar_preset("paper", 7), Error);
  EXPECT_THROW(polar_preset("nosuch", 128), Error);
}

TEST(PolarCodec, ExplicitAllocationNames) {
  const PolarConfig c = polar_preset("polar-434444", 64);
  EXPECT_EQ(c.levels, 6);
  EXPECT_EQ(c.bits, (std::vector<int>{4, 3, 4, 4, 4, 4}));
  EXPECT_EQ(c.name, "polar-434444");
  EXPECT_EQ(c.payload_bits(), 32u * 4 + 16 * 3 + 8 * 4 + 4 * 4 + 2 * 4 + 4 + 16);  // 252
  EXPECT_EQ(PolarCodec(c).group_bytes(), 32u);                                     // 4.0 bits
  // polar-4222 is the paper preset's allocation, byte for byte.
  const PolarCodec mine(polar_preset("polar-4222", 64)), paper(polar_preset("paper", 64));
  std::vector<float> x(64);
  for (int i = 0; i < 64; ++i) x[i] = std::sin(0.37f * i) + 0.1f * i;
  std::vector<uint8_t> a(mine.group_bytes()), b(paper.group_bytes());
  mine.encode(x.data(), 1, a.data());
  paper.encode(x.data(), 1, b.data());
  EXPECT_EQ(a, b);
  EXPECT_TRUE(is_polar_codec_name("polar-4222"));
  EXPECT_TRUE(is_polar_codec_name("polar37"));
  EXPECT_FALSE(is_polar_codec_name("q4_0"));
  EXPECT_EQ(make_codec("polar-434444", 64)->group_bytes(), 32u);
  EXPECT_EQ(polar_preset("polar-544444", 8).bits, (std::vector<int>{5, 4, 4}));  // 3 levels fit
  for (const char* bad :
       {"polar-", "polar-49", "polar-40", "polar-4x22", "polar-43333333333333333"}) {
    EXPECT_THROW(polar_preset(bad, 64), Error) << bad;  // 9 and 0 bits; more than 16 levels
  }
  EXPECT_THROW(polar_preset("polar-4222", 7), Error);
  try {
    make_codec("polar-4x22", 64);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("one digit 1..8 per level"), std::string::npos)
        << e.what();
  }
}

struct NmseCase {
  const char* preset;
  int levels;
  double expected;  // ../shared/docs/polarquant.md section 3, d = 128, fp16 radius, Gaussian data
};

class PolarNmse : public ::testing::TestWithParam<NmseCase> {};

TEST_P(PolarNmse, GaussianNmseMatchesTheReferenceTable) {
  const NmseCase c = GetParam();
  const PolarConfig config = polar_preset(c.preset, 128);
  ASSERT_EQ(config.levels, c.levels);
  const auto x = gaussian_data(3000, 128, 2024);
  const CodecStats s = measure_codec(PolarCodec(config), x);
  EXPECT_NEAR(s.nmse, c.expected, 0.03 * c.expected) << c.preset;
}

INSTANTIATE_TEST_SUITE_P(
    Presets, PolarNmse,
    ::testing::Values(NmseCase{"paper", 4, 3.21e-2}, NmseCase{"polar39", 5, 1.86e-2},
                      NmseCase{"polar37", 6, 1.89e-2}, NmseCase{"polar41", 7, 1.44e-2}),
    [](const ::testing::TestParamInfo<NmseCase>& info) { return std::string(info.param.preset); });

TEST(PolarCodec, PreconditioningMakesKeyLikeDataBehaveLikeGaussian) {
  const auto gauss = gaussian_data(2000, 128, 1);
  const auto keys = keylike_data(2000, 128, 2);
  PolarConfig with = polar_preset("paper", 128);
  PolarConfig without = with;
  without.rotation = RotationKind::kNone;
  const double g = measure_codec(PolarCodec(with), gauss).nmse;
  const double k_rot = measure_codec(PolarCodec(with), keys).nmse;
  const double k_raw = measure_codec(PolarCodec(without), keys).nmse;
  EXPECT_NEAR(k_rot, g, 0.10 * g);
  EXPECT_GT(k_raw, 1.5 * g);
  PolarConfig hadamard = with;
  hadamard.rotation = RotationKind::kHadamard;
  EXPECT_NEAR(measure_codec(PolarCodec(hadamard), keys).nmse, g, 0.10 * g);
}

TEST(PolarCodec, ZeroVectorRoundTripsToZero) {
  const PolarCodec codec(polar_preset("paper", 64));
  std::vector<float> x(64, 0.0f), back(64, 1.0f);
  std::vector<uint8_t> codes(codec.group_bytes());
  codec.encode(x.data(), 1, codes.data());
  codec.decode(codes.data(), 1, back.data());
  for (float v : back) EXPECT_EQ(v, 0.0f);
}

TEST(PolarCodec, EncodeDecodeMatchesQuantizeRotated) {
  // The packed path and the index/radius path describe the same reconstruction.
  const PolarCodec codec(polar_preset("polar37", 64));
  const auto x = gaussian_data(10, 64, 3);
  std::vector<uint8_t> codes(10 * codec.group_bytes());
  std::vector<float> dec(x.size()), y(x.size()), yh(x.size()), ref(x.size());
  codec.encode(x.data(), 10, codes.data());
  codec.decode(codes.data(), 10, dec.data());
  codec.rotation().forward(x.data(), y.data(), 10);
  std::vector<uint8_t> idx(10 * codec.shape().num_angles());
  std::vector<float> radii(10 * codec.shape().num_radii());
  codec.quantize_rotated(y.data(), 10, idx.data(), radii.data());
  codec.dequantize_rotated(idx.data(), radii.data(), 10, yh.data());
  codec.rotation().inverse(yh.data(), ref.data(), 10);
  EXPECT_EQ(dec, ref);
}

TEST(PolarCodec, EveryRadiusPrecisionAndRotationRoundTrips) {
  for (auto radius : {RadiusPrecision::kFp16, RadiusPrecision::kBf16, RadiusPrecision::kFp32}) {
    for (auto rot : {RotationKind::kNone, RotationKind::kDense, RotationKind::kHadamard}) {
      PolarConfig c = polar_preset("paper", 64);
      c.radius = radius;
      c.rotation = rot;
      const auto x = gaussian_data(500, 64, 4);
      const double nmse = measure_codec(PolarCodec(c), x).nmse;
      EXPECT_LT(nmse, 0.036) << radius_precision_name(radius) << " " << rotation_kind_name(rot);
      EXPECT_GT(nmse, 0.02);
    }
  }
}

TEST(PolarCodec, MoreBitsNeverMoreError) {
  const auto x = gaussian_data(1000, 64, 5);
  double previous = 1.0;
  for (int b = 1; b <= 6; ++b) {
    PolarConfig c;
    c.dim = 64;
    c.levels = 4;
    c.bits = {b, b, b, b};
    const double nmse = measure_codec(PolarCodec(c), x).nmse;
    EXPECT_LT(nmse, previous) << b << " bits";
    previous = nmse;
  }
}

TEST(PolarCodec, RejectsBadConfigurations) {
  PolarConfig c;
  c.dim = 100;  // not divisible by 16
  EXPECT_THROW(PolarCodec{c}, Error);
  c = PolarConfig{};
  c.bits = {4, 2, 2};  // three widths for four levels
  EXPECT_THROW(PolarCodec{c}, Error);
  c = PolarConfig{};
  c.bits = {4, 2, 9, 2};
  try {
    PolarCodec{c};
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bits[2]"), std::string::npos) << e.what();
  }
  c = PolarConfig{};
  c.dim = 96;
  c.levels = 5;
  c.bits = {4, 2, 2, 2, 2};
  c.rotation = RotationKind::kHadamard;
  EXPECT_THROW(PolarCodec{c}, Error);
  c = PolarConfig{};
  c.codebooks = {analytic_codebook(1, 4)};
  EXPECT_THROW(PolarCodec{c}, Error);
}

TEST(PolarCodec, RejectsNonFiniteInputWithoutTouchingOutput) {
  const PolarCodec codec(polar_preset("paper", 64));
  auto x = gaussian_data(3, 64, 6);
  x[64 + 17] = NAN;
  std::vector<uint8_t> codes(3 * codec.group_bytes(), 0xab);
  try {
    codec.encode(x.data(), 3, codes.data());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("vector 1"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("coordinate 17"), std::string::npos) << e.what();
  }
  for (uint8_t b : codes) EXPECT_EQ(b, 0xab);
  x[64 + 17] = INFINITY;
  EXPECT_THROW(codec.encode(x.data(), 3, codes.data()), Error);
  x[64 + 17] = 1e30f;  // finite but its block norm overflows fp16
  EXPECT_THROW(codec.encode(x.data(), 3, codes.data()), Error);
}

TEST(PolarCodec, CorruptRadiusIsAFormatError) {
  const PolarCodec codec(polar_preset("paper", 64));
  const auto x = gaussian_data(2, 64, 7);
  std::vector<uint8_t> codes(2 * codec.group_bytes());
  codec.encode(x.data(), 2, codes.data());
  const uint16_t nan_half = 0x7e00, negative = float_to_half(-1.0f);
  std::vector<float> out(128);
  auto bad = codes;
  bad[codec.group_bytes()] = nan_half & 0xff;
  bad[codec.group_bytes() + 1] = nan_half >> 8;
  EXPECT_THROW(codec.decode(bad.data(), 2, out.data()), Error);
  bad = codes;
  bad[0] = negative & 0xff;
  bad[1] = negative >> 8;
  EXPECT_THROW(codec.decode(bad.data(), 2, out.data()), Error);
}

TEST(PolarCodec, ContainerRoundTripAndCorruption) {
  PolarConfig c = polar_preset("paper", 64);
  c.codebooks = {analytic_codebook(1, 4), analytic_codebook(2, 2), analytic_codebook(3, 2),
                 analytic_codebook(4, 2)};
  const PolarCodec codec(c);
  const auto x = gaussian_data(9, 64, 8);
  const auto packed = codec.pack(x.data(), 9);
  const auto un = PolarCodec::unpack(packed.data(), packed.size());
  EXPECT_EQ(un.count, 9u);
  EXPECT_EQ(un.config.bits, c.bits);
  EXPECT_EQ(un.config.codebooks.size(), 4u);
  std::vector<uint8_t> codes(9 * codec.group_bytes());
  std::vector<float> direct(x.size());
  codec.encode(x.data(), 9, codes.data());
  codec.decode(codes.data(), 9, direct.data());
  EXPECT_EQ(un.vectors, direct);

  for (size_t cut = 0; cut < packed.size(); cut += 5) {
    EXPECT_THROW(PolarCodec::unpack(packed.data(), cut), Error) << "truncated at " << cut;
  }
  for (size_t pos : {size_t{5}, size_t{9}, size_t{30}, packed.size() / 2, packed.size() - 6}) {
    auto bad = packed;
    bad[pos] ^= 0x10;
    try {
      PolarCodec::unpack(bad.data(), bad.size());
      FAIL() << "corruption at byte " << pos << " was not detected";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kFormat) << e.what();
    }
  }
  auto extra = packed;
  extra.push_back(0);
  EXPECT_THROW(PolarCodec::unpack(extra.data(), extra.size()), Error);
}

}  // namespace
}  // namespace polarquant

namespace polarquant {
namespace {

TEST(PolarCodec, FastQuantizeAgreesWithTheReference) {
  for (const char* preset : {"paper", "polar37", "polar41", "custom"}) {
    PolarConfig config = polar_preset(std::string(preset) == "custom" ? "paper" : preset, 128);
    if (std::string(preset) == "custom") {  // a trained, non-uniform level-1 codebook
      std::vector<float> angles;
      for (int i = 0; i < 4000; ++i) angles.push_back(std::fmod(0.37f * i * i, 6.2831f));
      config.codebooks = {train_codebook(1, 4, angles.data(), angles.size(), 5),
                          analytic_codebook(2, 2), analytic_codebook(3, 2),
                          analytic_codebook(4, 2)};
    }
    const PolarCodec codec(config);
    const size_t n = 2000;
    const auto y = gaussian_data(n, 128, 77);
    const size_t na = codec.shape().num_angles(), nr = codec.shape().num_radii();
    std::vector<uint8_t> fast(n * na), ref(n * na);
    std::vector<float> rf(n * nr), rr(n * nr);
    codec.quantize_rotated(y.data(), n, fast.data(), rf.data());
    codec.quantize_rotated_reference(y.data(), n, ref.data(), rr.data());
    EXPECT_EQ(rf, rr) << preset;
    // Special pairs: zeros, signed zeros, the axes (angles 0, pi/2, pi, 3pi/2). These sit exactly
    // on decision boundaries of the uniform level-1 codebook, so either neighbour is a nearest
    // centroid; the two paths must pick one of the equally near ones.
    std::vector<float> special(128, 0.0f);
    const float pairs[][2] = {{0, 0}, {-0.0f, 0}, {0, -0.0f},  {1, 0},
                              {0, 1}, {-1, 0},    {-1, -0.0f}, {0, -1}};
    for (int p = 0; p < 8; ++p) {
      special[2 * p] = pairs[p][0];
      special[2 * p + 1] = pairs[p][1];
    }
    std::vector<uint8_t> sf(na), sr(na);
    std::vector<float> rad_f(nr), rad_r(nr);
    codec.quantize_rotated(special.data(), 1, sf.data(), rad_f.data());
    codec.quantize_rotated_reference(special.data(), 1, sr.data(), rad_r.data());
    const auto& c1 = codec.codebooks()[0].centroids();
    for (int p = 0; p < 8; ++p) {
      const double angle = std::atan2(double(pairs[p][1]), double(pairs[p][0]));
      auto dist = [&](double c) {
        const double x = std::fabs(std::remainder(angle - c, 2 * 3.14159265358979323846));
        return x;
      };
      if (pairs[p][0] != 0 || pairs[p][1] != 0) {  // a zero pair has no angle: any code is exact
        EXPECT_NEAR(dist(c1[sf[p]]), dist(c1[sr[p]]), 1e-5) << preset << " pair " << p;
      }
    }
  }
}

}  // namespace
}  // namespace polarquant
