// Reconstruction quality of a codec, and the generated data the command line measures it on
// (`polarquant codec-stats`). Public so that the Python bindings report the same figures as the
// command line for the same codec, seed and data.
#pragma once

#include <polarquant/codec.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace polarquant {

struct CodecStats {
  double bits_per_coordinate = 0.0;
  double compression_vs_fp16 = 0.0;
  // sum ||x - x_hat||^2 / sum ||x||^2
  double nmse = 0.0;
  // RMS of (<q, x> - <q, x_hat>) over RMS of <q, x>, for independent Gaussian queries q.
  double inner_product_error = 0.0;
};

// Encodes and decodes x (n x codec.dim(), n a multiple of group_size()) and measures the error.
// Throws InvalidArgument when x is not whole groups (or, from the codec, holds non-finite values).
CodecStats measure_codec(const Codec& codec, const std::vector<float>& x, uint64_t query_seed = 1);

// n x dim standard Gaussian values (seeded, the same on every machine).
std::vector<float> gaussian_data(size_t n, int dim, uint64_t seed);

// n x dim: Gaussian, with 4 channels (spread over the vector) scaled 10x, plus a per-channel mean
// drawn once from N(0, 1). Without preconditioning these concentrate a few pairs' energy and break
// the angle distributions PolarQuant's codebooks assume.
std::vector<float> keylike_data(size_t n, int dim, uint64_t seed);

}  // namespace polarquant
