// TurboQuant-mse: Gaussian Lloyd-Max codebooks and the distortion on unit directions.
#include <gtest/gtest.h>

#include <polarquant/codec.h>

#include <cmath>
#include <vector>

#include "codecs/peer_codecs.h"
#include "core/random.h"

namespace polarquant {
namespace {

TEST(CodecTurbo, GaussianLloydMaxMatchesTheKnownDistortions) {
  // Lloyd-Max MSE of N(0, 1) (Max 1960): 0.3634, 0.1175, 0.03454, 0.009497 for 1..4 bits.
  const double expected[] = {0.36338, 0.11748, 0.03455, 0.009497};
  for (int bits = 1; bits <= 4; ++bits) {
    const auto c = codecs::gaussian_lloyd_max(bits);
    ASSERT_EQ(c.size(), size_t(1) << bits);
    for (size_t i = 0; i + 1 < c.size(); ++i) EXPECT_LT(c[i], c[i + 1]);
    for (size_t i = 0; i < c.size(); ++i) EXPECT_NEAR(c[i], -c[c.size() - 1 - i], 1e-9);
    EXPECT_NEAR(codecs::gaussian_lloyd_max_mse(c), expected[bits - 1], 2e-3 * expected[bits - 1]);
  }
  EXPECT_NEAR(codecs::gaussian_lloyd_max(1)[1], std::sqrt(2 / M_PI), 1e-9);
}

TEST(CodecTurbo, DistortionOnUnitDirections) {
  // E||u - u_hat||^2 for unit u tends to the Gaussian Lloyd-Max MSE as d grows. Tolerance 6%:
  // a rotated unit vector's coordinates are Beta-distributed with lighter tails than N(0, 1/d), an
  // O(1/d) effect (measured 1.2-3.9% below the Gaussian values at d = 64..256, seed 77); the
  // sampling error of the mean over 1000 vectors is about 0.5% (per-vector relative spread ~
  // sqrt(2/d)), and the fp16 norm adds < 1e-6.
  const double expected[] = {0.1175, 0.0345, 0.0095};
  for (int dim : {64, 128, 256}) {
    const size_t n = 1000;
    Rng rng(dim);
    std::vector<float> x(n * dim);
    for (size_t i = 0; i < n; ++i) {
      double norm = 0;
      for (int j = 0; j < dim; ++j)
        x[i * dim + j] = float(rng.gaussian()), norm += x[i * dim + j] * x[i * dim + j];
      for (int j = 0; j < dim; ++j) x[i * dim + j] = float(x[i * dim + j] / std::sqrt(norm));
    }
    for (int bits = 2; bits <= 4; ++bits) {
      const auto codec = make_codec("turbo" + std::to_string(bits), dim, 77);
      std::vector<uint8_t> codes(n * codec->group_bytes());
      std::vector<float> y(x.size());
      codec->encode(x.data(), n, codes.data());
      codec->decode(codes.data(), n, y.data());
      double err = 0;
      for (size_t i = 0; i < x.size(); ++i) err += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
      err /= double(n);
      EXPECT_NEAR(err, expected[bits - 2], 0.06 * expected[bits - 2])
          << "d " << dim << " bits " << bits;
    }
  }
}

TEST(CodecTurbo, NormIsStoredNotLost) {
  // Scaling the input scales the output (up to fp16 rounding of the norm): direction and norm are
  // coded separately.
  const int dim = 64;
  const auto codec = make_codec("turbo3", dim);
  Rng rng(1);
  std::vector<float> x(dim), x8(dim), y(dim), y8(dim);
  for (int j = 0; j < dim; ++j) x[j] = float(rng.gaussian()), x8[j] = 8 * x[j];
  std::vector<uint8_t> c(codec->group_bytes()), c8(codec->group_bytes());
  codec->encode(x.data(), 1, c.data());
  codec->encode(x8.data(), 1, c8.data());
  EXPECT_TRUE(std::equal(c.begin() + 2, c.end(), c8.begin() + 2));  // same direction codes
  codec->decode(c.data(), 1, y.data());
  codec->decode(c8.data(), 1, y8.data());
  for (int j = 0; j < dim; ++j) EXPECT_NEAR(y8[j], 8 * y[j], 1e-4 * (1 + std::fabs(y8[j])));
}

}  // namespace
}  // namespace polarquant
