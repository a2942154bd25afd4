#include "eval/synthetic.h"

#include "core/random.h"

namespace polarquant {

std::vector<float> gaussian_data(size_t n, int dim, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> x(n * static_cast<size_t>(dim));
  for (auto& v : x) v = static_cast<float>(rng.gaussian());
  return x;
}

std::vector<float> keylike_data(size_t n, int dim, uint64_t seed) {
  Rng rng(seed ^ 0x6b65796c696b65ull);
  std::vector<float> mean(static_cast<size_t>(dim)), scale(static_cast<size_t>(dim), 1.0f);
  for (auto& m : mean) m = static_cast<float>(rng.gaussian());
  for (int i = 0; i < 4 && i < dim; ++i) scale[(static_cast<size_t>(i) * 2 + 1) * dim / 8] = 10.0f;
  std::vector<float> x = gaussian_data(n, dim, seed);
  for (size_t v = 0; v < n; ++v) {
    for (int k = 0; k < dim; ++k) x[v * dim + k] = x[v * dim + k] * scale[k] + mean[k];
  }
  return x;
}

}  // namespace polarquant
