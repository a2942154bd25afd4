// Shared helpers of the cache and attention tests: seeded data and a cache filled with it.
#pragma once

#include <polarquant/attention.h>
#include <polarquant/kv_cache.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace polarquant::testing {

// n standard-normal floats times `scale`, from a fixed seed (tests only run on one standard
// library, so std::normal_distribution is reproducible enough here).
inline std::vector<float> gaussian(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = scale * dist(rng);
  return x;
}

// Keys and values of n_tokens tokens for one layer (n_tokens x n_kv_heads x head_dim each). Keys
// get a per-channel offset and a few large channels, as real keys have.
// RoPE frequencies theta^(-2i / head_dim), i < head_dim / 2 (interleaved pairs, as Llama GGUFs).
inline std::vector<float> rope_inv_freq(int head_dim, double theta = 10000.0) {
  std::vector<float> f(static_cast<size_t>(head_dim / 2));
  for (size_t i = 0; i < f.size(); ++i)
    f[i] = static_cast<float>(std::pow(theta, -2.0 * static_cast<double>(i) / head_dim));
  return f;
}

// Keys whose pre-RoPE bias RoPE rotates, as a model's are: each pair (j, j + 1) of the n rows of
// `row` floats (heads x head_dim) gets the bias (2.5 + 0.05 j, -1.5), then RoPE (interleaved pairs,
// frequencies freq) at positions 0..n-1.
inline void rope_biased_keys(float* k, size_t n, size_t row, int head_dim,
                             const std::vector<float>& freq) {
  for (size_t t = 0; t < n; ++t) {
    for (size_t j = 0; j < row; j += 2) {
      float* x = &k[t * row + j];
      const float a = x[0] + 2.5f + 0.05f * j, b = x[1] - 1.5f;
      const double angle = static_cast<double>(t) * freq[(j % head_dim) / 2];
      x[0] = static_cast<float>(a * std::cos(angle) - b * std::sin(angle));
      x[1] = static_cast<float>(a * std::sin(angle) + b * std::cos(angle));
    }
  }
}

struct TokenData {
  std::vector<float> k, v;
};
inline TokenData token_data(size_t n_tokens, int n_kv_heads, int head_dim, uint64_t seed) {
  TokenData d;
  const size_t row = static_cast<size_t>(n_kv_heads) * head_dim;
  d.k = gaussian(n_tokens * row, seed);
  d.v = gaussian(n_tokens * row, seed + 1);
  for (size_t t = 0; t < n_tokens; ++t) {
    for (size_t j = 0; j < row; ++j) {
      const size_t c = j % head_dim;
      d.k[t * row + j] += 0.5f * std::sin(static_cast<float>(c));
      if (c % 29 == 3) d.k[t * row + j] *= 4.0f;
    }
  }
  return d;
}

inline float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float m = 0.0f;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return a.size() == b.size() ? m : INFINITY;
}

// A cache of options o filled with data (rows of o.n_kv_heads x o.head_dim floats) as a prompt of
// `prompt` tokens then one token at a time; the last token's attention with 4 query heads over
// layer 0 (fused or the reference), every key and value read back, and the cache's bytes.
struct PromptRun {
  std::vector<float> out, k, v;
  size_t bytes = 0;
};
inline PromptRun prompt_then_decode(const KvCacheOptions& o, const TokenData& data, size_t prompt,
                                    bool fused) {
  KvCache cache(o);
  const SequenceId seq = cache.add_sequence();
  const size_t dim = static_cast<size_t>(o.head_dim);
  const size_t row = static_cast<size_t>(o.n_kv_heads) * dim, n = data.k.size() / row;
  cache.append(seq, 0, data.k.data(), data.v.data(), prompt);
  for (size_t t = prompt; t < n; ++t) cache.append(seq, 0, &data.k[t * row], &data.v[t * row], 1);
  const auto q = gaussian(4 * dim, 9, 0.3f);
  PromptRun r;
  r.out.resize(4 * dim);
  AttentionOptions a;
  a.use_fused = fused;
  a.n_threads = 1;
  cache_attention(cache, seq, 0, q.data(), 1, 4, r.out.data(), a);
  r.k.resize(n * row);
  r.v.resize(n * row);
  cache.read(seq, 0, 0, n, r.k.data(), r.v.data());
  r.bytes = cache.memory().total_bytes;
  return r;
}

}  // namespace polarquant::testing
