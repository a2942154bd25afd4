#include <gtest/gtest.h>
#include <polarquant/codebook.h>
#include <polarquant/error.h>
#include <polarquant/polar_transform.h>

#include <cmath>
#include <cstdio>
#include <numbers>

#include "core/bytes.h"
#include "test_data.h"

namespace polarquant {
namespace {

constexpr double kPi = std::numbers::pi;

// Level-l angles of standard Gaussian vectors (d = 128, 4 levels), as the paper's Lemma 2
// describes.
std::vector<float> gaussian_angles(int level, size_t n_vectors, uint64_t seed) {
  const PolarShape shape = make_polar_shape(128, 4);
  const auto y = testing::gaussian_vectors(n_vectors, 128, seed);
  std::vector<float> angles(n_vectors * shape.num_angles()), radii(n_vectors * shape.num_radii());
  polar_forward(shape, y.data(), angles.data(), radii.data(), n_vectors);
  std::vector<float> out;
  for (size_t v = 0; v < n_vectors; ++v) {
    const float* a = &angles[v * shape.num_angles() + shape.offset_of(level)];
    out.insert(out.end(), a, a + shape.angles_at(level));
  }
  return out;
}

TEST(Codebook, DensitiesIntegrateToOneWithMeanQuarterPi) {
  for (int level = 2; level <= 7; ++level) {
    const int n = 100000;
    double mass = 0.0, mean = 0.0;
    for (int i = 0; i < n; ++i) {
      const double x = (i + 0.5) * (kPi / 2) / n;
      const double w = Codebook::density(level, x) * (kPi / 2) / n;
      mass += w;
      mean += w * x;
    }
    EXPECT_NEAR(mass, 1.0, 1e-6) << "level " << level;
    EXPECT_NEAR(mean, kPi / 4, 1e-6) << "level " << level;
  }
  EXPECT_NEAR(Codebook::density(1, 1.0), 1.0 / (2 * kPi), 1e-15);
  EXPECT_NEAR(Codebook::density(2, kPi / 4), 1.0, 1e-12);  // sin(2psi) at its peak
  EXPECT_NEAR(Codebook::density(4, kPi / 4), 2.1875, 1e-12);
}

// The reference centroids of ../shared/docs/polarquant.md section 3 (computed there independently).
TEST(Codebook, AnalyticCentroidsMatchTheReferenceTable) {
  const std::vector<std::vector<double>> expected = {{0.3098, 0.6340, 0.9368, 1.2611},
                                                     {0.4262, 0.6744, 0.8964, 1.1446},
                                                     {0.5242, 0.7059, 0.8649, 1.0466}};
  for (int level = 2; level <= 4; ++level) {
    const Codebook cb = analytic_codebook(level, 2);
    // The table is rounded to 4 decimals (and was computed independently): 1e-4 is its resolution.
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(cb.centroids()[i], expected[level - 2][i], 1e-4);
  }
  const Codebook l1 = analytic_codebook(1, 4);
  for (int k = 0; k < 16; ++k) EXPECT_NEAR(l1.centroids()[k], (k + 0.5) * 2 * kPi / 16, 1e-6);
}

TEST(Codebook, AnalyticAngleMseMatchesTheReferenceTable) {
  const double expected[] = {1.285e-2, 9.909e-3, 6.161e-3, 3.393e-3};
  const int bits[] = {4, 2, 2, 2};
  for (int level = 1; level <= 4; ++level) {
    const auto samples = gaussian_angles(level, 4000, 100 + level);
    const double mse =
        angle_mse(analytic_codebook(level, bits[level - 1]), samples.data(), samples.size());
    EXPECT_NEAR(mse, expected[level - 1], 0.03 * expected[level - 1]) << "level " << level;
  }
}

TEST(Codebook, QuantizeIsNearestCentroidWithWrapAround) {
  const Codebook cb = analytic_codebook(1, 2);  // centroids pi/4, 3pi/4, 5pi/4, 7pi/4
  EXPECT_EQ(cb.quantize(0.01f), 0);
  EXPECT_EQ(cb.quantize(float(2 * kPi) - 0.01f), 3);
  EXPECT_EQ(cb.quantize(float(kPi) - 0.001f), 1);
  EXPECT_EQ(cb.quantize(float(kPi) + 0.001f), 2);
  const Codebook wrapped(1, 1, {0.5f, 6.0f});
  EXPECT_EQ(wrapped.quantize(6.27f), 1);
  EXPECT_EQ(wrapped.quantize(0.1f), 1);  // 0.38 from 6.0 across 2pi, 0.4 from 0.5
  EXPECT_EQ(wrapped.quantize(0.3f), 0);
  EXPECT_EQ(wrapped.quantize(3.0f), 0);  // 2.5 from 0.5 vs 3.0 from 6.0
  const Codebook upper = analytic_codebook(3, 3);
  for (float a = 0.0f; a <= 1.57f; a += 0.01f) {
    const int q = upper.quantize(a);
    for (int j = 0; j < upper.size(); ++j) {
      EXPECT_LE(std::fabs(a - upper.centroids()[q]), std::fabs(a - upper.centroids()[j]) + 1e-7);
    }
  }
}

TEST(Codebook, TrainedCodebookApproachesTheAnalyticOne) {
  for (int level : {1, 2, 3}) {
    const int bits = level == 1 ? 3 : 2;
    const auto train = gaussian_angles(level, 1000, 7);
    const auto test = gaussian_angles(level, 1000, 8);
    const Codebook trained = train_codebook(level, bits, train.data(), train.size(), 1);
    const double mse_trained = angle_mse(trained, test.data(), test.size());
    const double mse_analytic = angle_mse(analytic_codebook(level, bits), test.data(), test.size());
    EXPECT_LT(mse_trained, 1.04 * mse_analytic) << "level " << level;
    // Deterministic for a seed.
    EXPECT_EQ(trained.centroids(),
              train_codebook(level, bits, train.data(), train.size(), 1).centroids());
  }
}

TEST(Codebook, TrainingHandlesAClusterAcrossZero) {
  // Level-1 angles concentrated around 0 = 2pi: a circular k-means keeps them in one cell.
  std::vector<float> samples;
  for (int i = 0; i < 500; ++i) {
    const float a = 0.2f * (i % 50) / 50.0f - 0.1f;
    samples.push_back(a < 0 ? a + float(2 * kPi) : a);
    samples.push_back(float(kPi) + 0.1f * ((i % 7) - 3));
  }
  const Codebook cb = train_codebook(1, 1, samples.data(), samples.size(), 3);
  // Optimal: one centroid at 0 = 2pi, one at pi; the MSE is then the clusters' own spread,
  // (0.0033 + 0.04) / 2 = 0.0217. Splitting the cluster at 0 would cost far more.
  const float a = cb.centroids()[0], b = cb.centroids()[1];
  EXPECT_TRUE(a < 0.01f || b > float(2 * kPi) - 0.01f) << a << " " << b;
  EXPECT_TRUE(std::fabs(a - float(kPi)) < 0.01f || std::fabs(b - float(kPi)) < 0.01f)
      << a << " " << b;
  EXPECT_LT(angle_mse(cb, samples.data(), samples.size()), 0.0220);
}

TEST(Codebook, RejectsBadCentroidsAndSamples) {
  EXPECT_THROW(Codebook(2, 2, {0.1f, 0.2f, 0.3f}), Error);        // wrong count
  EXPECT_THROW(Codebook(2, 2, {0.1f, 0.3f, 0.2f, 0.4f}), Error);  // unsorted
  EXPECT_THROW(Codebook(2, 2, {0.1f, 0.2f, 0.3f, 2.0f}), Error);  // outside [0, pi/2]
  EXPECT_THROW(Codebook(1, 1, {0.1f, NAN}), Error);
  EXPECT_THROW(Codebook(2, 9, std::vector<float>(512, 0.5f)), Error);
  EXPECT_THROW(analytic_codebook(2, 0), Error);
  const float bad[] = {0.1f, 0.2f, NAN, 0.3f, 0.4f};
  EXPECT_THROW(train_codebook(2, 2, bad, 5), Error);
  const float few[] = {0.1f, 0.2f};
  EXPECT_THROW(train_codebook(2, 2, few, 2), Error);
}

TEST(Codebook, SaveLoadRoundTripAndCorruptFiles) {
  const std::vector<Codebook> books = {analytic_codebook(1, 4), analytic_codebook(2, 3),
                                       analytic_codebook(3, 2)};
  const auto bytes = serialize_codebooks(books);
  const auto back = deserialize_codebooks(bytes.data(), bytes.size());
  ASSERT_EQ(back.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(back[i].centroids(), books[i].centroids());

  const std::string path = ::testing::TempDir() + "/codebooks.pqcb";
  save_codebooks(path, books);
  EXPECT_EQ(load_codebooks(path)[1].centroids(), books[1].centroids());
  std::remove(path.c_str());
  EXPECT_THROW(load_codebooks(path), Error);

  for (size_t cut = 0; cut < bytes.size(); cut += 7) {  // every truncation fails cleanly
    EXPECT_THROW(deserialize_codebooks(bytes.data(), cut), Error) << "cut at " << cut;
  }
  auto flipped = bytes;
  flipped[20] ^= 0x40;  // inside a centroid
  try {
    deserialize_codebooks(flipped.data(), flipped.size(), "test.pqcb");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat);
    EXPECT_NE(std::string(e.what()).find("test.pqcb"), std::string::npos);
  }
}

}  // namespace
}  // namespace polarquant
