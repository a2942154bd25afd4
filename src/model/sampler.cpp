#include "model/sampler.h"

#include <polarquant/error.h>

#include <algorithm>
#include <cmath>

namespace polarquant::model {

int argmax(const float* x, size_t n) {
  size_t best = 0;
  for (size_t i = 1; i < n; ++i) {
    if (x[i] > x[best]) best = i;
  }
  return static_cast<int>(best);
}

void log_softmax(const float* x, size_t n, double* out) {
  double max = x[0];
  for (size_t i = 1; i < n; ++i) max = std::max(max, static_cast<double>(x[i]));
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i]) - max);
  const double log_z = max + std::log(sum);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<double>(x[i]) - log_z;
}

Sampler::Sampler(const SamplerOptions& options) : options_(options), state_(options.seed) {
  if (!(options.temperature >= 0.0f) || !std::isfinite(options.temperature)) {
    throw_invalid("temperature must be a finite value >= 0, got " +
                  std::to_string(options.temperature));
  }
  if (!(options.top_p > 0.0f && options.top_p <= 1.0f)) {
    throw_invalid("top_p must be in (0, 1], got " + std::to_string(options.top_p));
  }
}

double Sampler::next_uniform() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

int Sampler::sample(const float* logits, size_t n) {
  if (n == 0) throw_invalid("cannot sample from an empty distribution");
  if (options_.temperature == 0.0f) return argmax(logits, n);
  float max = logits[0];
  for (size_t i = 1; i < n; ++i) max = std::max(max, logits[i]);
  candidates_.resize(n);
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const float p = std::exp((logits[i] - max) / options_.temperature);
    candidates_[i] = {p, static_cast<int>(i)};
    sum += p;
  }
  size_t kept = n;
  if (options_.top_p < 1.0f) {
    std::sort(candidates_.begin(), candidates_.end(), [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
    double cum = 0.0;
    for (size_t i = 0; i < n; ++i) {
      cum += candidates_[i].first;
      if (cum >= options_.top_p * sum) {
        kept = i + 1;
        break;
      }
    }
    sum = cum;
  }
  const double r = next_uniform() * sum;
  double cum = 0.0;
  for (size_t i = 0; i < kept; ++i) {
    cum += candidates_[i].first;
    if (r < cum) return candidates_[i].second;
  }
  return candidates_[kept - 1].second;  // rounding: the last kept candidate
}

}  // namespace polarquant::model
