// Designed data for property tests: seeded Gaussian vectors and "key-like" vectors (a few outlier
// channels and a per-channel mean, as real attention keys have).
#pragma once

#include <cstdint>
#include <vector>

#include "core/random.h"

namespace polarquant::testing {

inline std::vector<float> gaussian_vectors(size_t n, int dim, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> x(n * static_cast<size_t>(dim));
  for (auto& v : x) v = static_cast<float>(rng.gaussian());
  return x;
}

}  // namespace polarquant::testing
