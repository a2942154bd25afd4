// Reconstruction quality of a codec on a set of vectors.
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
CodecStats measure_codec(const Codec& codec, const std::vector<float>& x, uint64_t query_seed = 1);

}  // namespace polarquant
