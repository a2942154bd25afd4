#include <gtest/gtest.h>
#include <polarquant/error.h>
#include <polarquant/polar_transform.h>

#include <cmath>
#include <numbers>

#include "test_data.h"

namespace polarquant {
namespace {

TEST(PolarTransform, RoundTripIsExactToFloatPrecisionForEveryLevel) {
  for (int dim : {16, 32, 64, 128, 256}) {
    for (int levels = 1; (1 << levels) <= dim; ++levels) {
      const PolarShape shape = make_polar_shape(dim, levels);
      const size_t n = 16;
      const auto y = testing::gaussian_vectors(n, dim, dim * 31 + levels);
      std::vector<float> angles(n * shape.num_angles()), radii(n * shape.num_radii()),
          back(y.size());
      polar_forward(shape, y.data(), angles.data(), radii.data(), n);
      polar_inverse(shape, angles.data(), radii.data(), back.data(), n);
      for (size_t v = 0; v < n; ++v) {
        double norm = 0.0;
        for (int k = 0; k < dim; ++k) norm += double(y[v * dim + k]) * y[v * dim + k];
        for (int k = 0; k < dim; ++k) {
          // A few float roundings per level, relative to the vector's scale.
          EXPECT_NEAR(back[v * dim + k], y[v * dim + k], 4e-7 * (levels + 2) * std::sqrt(norm))
              << "dim " << dim << " levels " << levels << " coordinate " << k;
        }
      }
    }
  }
}

TEST(PolarTransform, AnglesInRangeAndRadiiAreBlockNorms) {
  const int dim = 64, levels = 4;
  const PolarShape shape = make_polar_shape(dim, levels);
  const size_t n = 200;
  const auto y = testing::gaussian_vectors(n, dim, 5);
  std::vector<float> angles(n * shape.num_angles()), radii(n * shape.num_radii());
  polar_forward(shape, y.data(), angles.data(), radii.data(), n);
  EXPECT_EQ(shape.num_angles(), 60);
  EXPECT_EQ(shape.num_radii(), 4);
  for (size_t v = 0; v < n; ++v) {
    for (int l = 1; l <= levels; ++l) {
      for (int j = 0; j < shape.angles_at(l); ++j) {
        const float a = angles[v * shape.num_angles() + shape.offset_of(l) + j];
        EXPECT_GE(a, 0.0f);
        if (l == 1)
          EXPECT_LT(a, float(2 * std::numbers::pi));
        else
          EXPECT_LE(a, float(std::numbers::pi / 2));
      }
    }
    for (int b = 0; b < shape.num_radii(); ++b) {
      double s = 0.0;
      for (int k = 0; k < 16; ++k) s += double(y[v * dim + b * 16 + k]) * y[v * dim + b * 16 + k];
      EXPECT_NEAR(radii[v * shape.num_radii() + b], std::sqrt(s), 1e-5 * std::sqrt(s));
    }
  }
}

TEST(PolarTransform, ZeroVectorMapsToZero) {
  const PolarShape shape = make_polar_shape(32, 5);
  std::vector<float> y(32, 0.0f), angles(shape.num_angles()), radii(shape.num_radii()),
      back(32, 1.0f);
  polar_forward(shape, y.data(), angles.data(), radii.data());
  polar_inverse(shape, angles.data(), radii.data(), back.data());
  for (float v : back) EXPECT_EQ(v, 0.0f);
}

TEST(PolarTransform, RejectsShapesThatDoNotSplit) {
  EXPECT_THROW(make_polar_shape(48, 5), Error);
  EXPECT_THROW(make_polar_shape(64, 0), Error);
  EXPECT_THROW(make_polar_shape(64, 17), Error);
  try {
    make_polar_shape(100, 3);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("100"), std::string::npos);
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
  }
}

}  // namespace
}  // namespace polarquant
