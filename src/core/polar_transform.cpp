#include <polarquant/error.h>
#include <polarquant/polar_transform.h>

#include <cmath>
#include <string>
#include <vector>

namespace polarquant {

namespace {
constexpr float kTwoPi = 6.28318530717958647692f;
}

PolarShape make_polar_shape(int dim, int levels) {
  if (levels < 1 || levels > 16) {
    throw_invalid("polar levels must be in [1, 16], got " + std::to_string(levels));
  }
  if (dim < 2 || dim % (1 << levels) != 0) {
    throw_invalid("dimension " + std::to_string(dim) + " is not divisible by 2^levels = " +
                  std::to_string(1 << levels) + " (levels = " + std::to_string(levels) +
                  "); choose fewer levels or a dimension that is a multiple of " +
                  std::to_string(1 << levels));
  }
  return PolarShape{dim, levels};
}

void polar_forward(const PolarShape& shape, const float* y, float* angles, float* radii, size_t n) {
  const int d = shape.dim;
  std::vector<float> r(static_cast<size_t>(d));
  for (size_t v = 0; v < n; ++v) {
    const float* in = y + v * d;
    float* ang = angles + v * shape.num_angles();
    // Level 1: full-circle angles of coordinate pairs.
    for (int j = 0; j < d / 2; ++j) {
      const float a = in[2 * j], b = in[2 * j + 1];
      float t = std::atan2(b, a);
      if (t < 0.0f) t += kTwoPi;
      if (!(t < kTwoPi)) t = 0.0f;  // -tiny + 2pi can round up to 2pi, which is angle 0
      ang[j] = t;
      r[j] = std::sqrt(a * a + b * b);
    }
    // Levels >= 2: quarter-circle angles of pairs of non-negative radii, in place.
    for (int level = 2; level <= shape.levels; ++level) {
      const int count = d >> level;
      float* out = ang + shape.offset_of(level);
      for (int j = 0; j < count; ++j) {
        const float a = r[2 * j], b = r[2 * j + 1];
        out[j] = std::atan2(b, a);
        r[j] = std::sqrt(a * a + b * b);
      }
    }
    float* rad = radii + v * shape.num_radii();
    for (int j = 0; j < shape.num_radii(); ++j) rad[j] = r[j];
  }
}

void polar_inverse(const PolarShape& shape, const float* angles, const float* radii, float* y,
                   size_t n) {
  const int d = shape.dim;
  for (size_t v = 0; v < n; ++v) {
    const float* ang = angles + v * shape.num_angles();
    float* out = y + v * d;
    for (int j = 0; j < shape.num_radii(); ++j) out[j] = radii[v * shape.num_radii() + j];
    // Top-down, in place: children 2j and 2j+1 are written after parent j has been read, walking j
    // downwards so that no unread parent is overwritten.
    for (int level = shape.levels; level >= 1; --level) {
      const float* a = ang + shape.offset_of(level);
      for (int j = (d >> level) - 1; j >= 0; --j) {
        const float rho = out[j];
        out[2 * j] = rho * std::cos(a[j]);
        out[2 * j + 1] = rho * std::sin(a[j]);
      }
    }
  }
}

}  // namespace polarquant
