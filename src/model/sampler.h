// Next-token selection: greedy (temperature 0) or sampling with temperature and nucleus (top-p),
// from a seeded generator whose stream is the same on every machine.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace polarquant::model {

struct SamplerOptions {
  float temperature = 0.0f;  // 0: greedy
  float top_p = 1.0f;        // keep the smallest set of tokens whose probability reaches top_p
  uint64_t seed = 0;
};

class Sampler {
 public:
  // Throws InvalidArgument for a negative or non-finite temperature or top_p outside (0, 1].
  explicit Sampler(const SamplerOptions& options);
  int sample(const float* logits, size_t n);
  // Uniform double in [0, 1) from splitmix64 (deterministic, portable).
  double next_uniform();

 private:
  SamplerOptions options_;
  uint64_t state_;
  std::vector<std::pair<float, int>> candidates_;
};

int argmax(const float* x, size_t n);
// log-softmax of x into out (n values), computed in double for stable KL divergences.
void log_softmax(const float* x, size_t n, double* out);

}  // namespace polarquant::model
