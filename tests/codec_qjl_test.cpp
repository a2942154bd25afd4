// QJL keys: the score <q, k_hat> is an unbiased estimate of <q, k> over the random projection.
#include <gtest/gtest.h>

#include <polarquant/codec.h>

#include <cmath>
#include <vector>

#include "core/random.h"

namespace polarquant {
namespace {

TEST(CodecQjl, ScoreEstimatorIsUnbiased) {
  const int dim = 64;
  Rng rng(17);
  std::vector<float> k(dim), q(dim);
  for (float& v : k) v = float(rng.gaussian());
  // q correlated with k, so the true score is far from zero and a scale error would show.
  for (int j = 0; j < dim; ++j) q[j] = 0.8f * k[j] + 0.6f * float(rng.gaussian());
  double truth = 0;
  for (int j = 0; j < dim; ++j) truth += double(q[j]) * k[j];

  const int seeds = 600;
  double sum = 0, sum_sq = 0;
  std::vector<float> k_hat(dim);
  for (int s = 0; s < seeds; ++s) {
    const auto codec = make_codec("qjl", dim, 1000 + s);
    std::vector<uint8_t> codes(codec->group_bytes());
    codec->encode(k.data(), 1, codes.data());
    codec->decode(codes.data(), 1, k_hat.data());
    double est = 0;
    for (int j = 0; j < dim; ++j) est += double(q[j]) * k_hat[j];
    sum += est;
    sum_sq += est * est;
  }
  const double mean = sum / seeds;
  const double sd = std::sqrt(std::max(0.0, sum_sq / seeds - mean * mean));
  const double standard_error = sd / std::sqrt(double(seeds));
  // Unbiased: the mean lies within 4 standard errors (a 6e-5 two-sided false-alarm rate for a
  // normal mean); the fp16 norm adds a relative bias below 2^-11, far inside that.
  EXPECT_NEAR(mean, truth, 4 * standard_error) << "sd " << sd;
  // A single estimate is noisy but not wild: QJL's variance is at most (pi/2) ||q||^2 ||k||^2 / m.
  double qq = 0, kk = 0;
  for (int j = 0; j < dim; ++j) qq += double(q[j]) * q[j], kk += double(k[j]) * k[j];
  EXPECT_LT(sd * sd, M_PI / 2 * qq * kk / (2 * dim));
  // And the bias test can fail: dropping the sqrt(pi/2) factor would move the mean by 20%.
  EXPECT_GT(0.2 * std::fabs(truth), 4 * standard_error);
}

TEST(CodecQjl, SignsFollowTheProjection) {
  // Negating the key flips every sign bit and keeps the norm, so k_hat flips sign exactly.
  const int dim = 32;
  const auto codec = make_codec("qjl", dim, 3);
  std::vector<float> k(dim), minus(dim);
  Rng rng(2);
  for (int j = 0; j < dim; ++j) k[j] = float(rng.gaussian()), minus[j] = -k[j];
  std::vector<uint8_t> a(codec->group_bytes()), b(codec->group_bytes());
  codec->encode(k.data(), 1, a.data());
  codec->encode(minus.data(), 1, b.data());
  EXPECT_EQ(a[0], b[0]);
  EXPECT_EQ(a[1], b[1]);
  for (size_t i = 2; i < a.size(); ++i) EXPECT_EQ(uint8_t(~a[i]), b[i]);
}

}  // namespace
}  // namespace polarquant
