// Error measures of the comparison harness on designed inputs with known answers.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "core/random.h"
#include "eval/distortion.h"

namespace polarquant {
namespace {

std::vector<float> gaussian(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> x(n);
  for (float& v : x) v = float(rng.gaussian());
  return x;
}

TEST(CompareDistortion, NmseOfScaledCopies) {
  const auto x = gaussian(1000, 1);
  std::vector<float> y(x.size()), zero(x.size(), 0.0f);
  for (size_t i = 0; i < x.size(); ++i) y[i] = 0.5f * x[i];  // exact in float
  EXPECT_EQ(nmse(x.data(), x.data(), x.size()), 0.0);
  EXPECT_NEAR(nmse(x.data(), zero.data(), x.size()), 1.0, 1e-12);
  EXPECT_NEAR(nmse(x.data(), y.data(), x.size()), 0.25, 1e-12);
  EXPECT_EQ(nmse(zero.data(), x.data(), x.size()), 0.0);  // defined as 0 for an all-zero reference
}

TEST(CompareDistortion, InnerProductErrorOfScaledCopies) {
  const int dim = 16;
  const auto x = gaussian(50 * dim, 2), q = gaussian(7 * dim, 3);
  std::vector<float> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = 0.75f * x[i];
  EXPECT_NEAR(inner_product_error(x.data(), y.data(), 50, q.data(), 7, dim), 0.25, 1e-9);
  EXPECT_EQ(inner_product_error(x.data(), x.data(), 50, q.data(), 7, dim), 0.0);
}

TEST(CompareDistortion, AttentionMatchesItsDefinition) {
  const int dim = 4;
  // Two keys: scores 2 and 0 (scale 1), values e0 and e1: probs e^2/(1+e^2), 1/(1+e^2).
  const float q[] = {1, 1, 0, 0};
  const float k[] = {1, 1, 0, 0, 0, 0, 3, 0};
  const float v[] = {1, 0, 0, 0, 0, 1, 0, 0};
  double p[2], out[4];
  attend(q, k, v, 2, dim, 1.0, p, out);
  const double p0 = std::exp(2.0) / (1 + std::exp(2.0));
  EXPECT_NEAR(p[0], p0, 1e-15);
  EXPECT_NEAR(p[1], 1 - p0, 1e-15);
  EXPECT_NEAR(out[0], p0, 1e-15);
  EXPECT_NEAR(out[1], 1 - p0, 1e-15);
  EXPECT_EQ(out[2], 0.0);
  // Huge scores do not overflow: the softmax subtracts the maximum.
  attend(q, k, v, 2, dim, 1e3, p, out);
  EXPECT_NEAR(p[0], 1.0, 1e-12);
  EXPECT_TRUE(std::isfinite(p[1]));
}

TEST(CompareDistortion, KlDivergenceKnownValues) {
  const double p[] = {0.5, 0.5}, r[] = {0.25, 0.75}, zero_one[] = {0.0, 1.0};
  EXPECT_EQ(kl_divergence(p, p, 2), 0.0);
  EXPECT_NEAR(kl_divergence(p, r, 2), 0.5 * std::log(2.0) + 0.5 * std::log(2.0 / 3.0), 1e-15);
  EXPECT_NEAR(kl_divergence(zero_one, p, 2), std::log(2.0), 1e-15);  // 0 log 0 = 0
  EXPECT_TRUE(std::isfinite(kl_divergence(p, zero_one, 2)));         // p_hat = 0 is clamped
  EXPECT_GT(kl_divergence(p, zero_one, 2), 300.0);
}

TEST(CompareDistortion, AttentionStatsPoolOverQueries) {
  AttentionErrorStats stats;
  const double p[] = {0.5, 0.5}, r[] = {0.25, 0.75};
  const double out[] = {3, 4}, out_hat[] = {3, 4}, out_off[] = {3, 5};
  stats.add(p, p, 2, out, out_hat, 2);
  EXPECT_EQ(stats.output_error(), 0.0);
  EXPECT_EQ(stats.mean_kl(), 0.0);
  stats.add(p, r, 2, out, out_off, 2);
  EXPECT_EQ(stats.queries(), 2u);
  EXPECT_NEAR(stats.output_error(), std::sqrt(1.0 / 50.0), 1e-15);
  EXPECT_NEAR(stats.mean_kl(), 0.5 * kl_divergence(p, r, 2), 1e-15);
}

}  // namespace
}  // namespace polarquant
