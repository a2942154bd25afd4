// Designed data for property tests: seeded Gaussian vectors and "key-like" vectors (a few outlier
// channels and a per-channel mean, as real attention keys have).
#pragma once

#include <cstdint>
#include <vector>

#include "eval/synthetic.h"

namespace polarquant::testing {

// n x dim standard Gaussian values (the library's own generator, so tests and commands agree).
inline std::vector<float> gaussian_vectors(size_t n, int dim, uint64_t seed) {
  return gaussian_data(n, dim, seed);
}

}  // namespace polarquant::testing
