// Generated vectors for codec statistics and tests: plain Gaussian, and "key-like" vectors that
// have what real attention keys have and a rotation removes: a few outlier channels and a channel
// mean.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace polarquant {

// n x dim standard Gaussian values.
std::vector<float> gaussian_data(size_t n, int dim, uint64_t seed);

// n x dim: Gaussian, with 4 channels (spread over the vector) scaled 10x, plus a per-channel mean
// drawn once from N(0, 1). Without preconditioning these concentrate a few pairs' energy and break
// the angle distributions PolarQuant's codebooks assume.
std::vector<float> keylike_data(size_t n, int dim, uint64_t seed);

}  // namespace polarquant
