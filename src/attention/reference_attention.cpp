// The double-precision references: attention over explicit K/V rows, and cache attention through
// KvCache::read (decode-then-attend), which the fused kernels are tested against.
#include <polarquant/attention.h>
#include <polarquant/error.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "attention/attention_internal.h"
#include "cache/kv_cache_impl.h"

namespace polarquant {

int resolve_threads(const AttentionOptions& options) {
  if (options.n_threads < 0) {
    throw_invalid("AttentionOptions.n_threads = " + std::to_string(options.n_threads) +
                  "; expected 0 (all hardware threads) or a positive count");
  }
  return options.n_threads == 0 ? omp_get_max_threads() : options.n_threads;
}

float check_attention_args(const char* caller, const float* q, size_t n_queries, int n_q_heads,
                           int n_kv_heads, int dim, const AttentionOptions& options) {
  const std::string where(caller);
  if (n_kv_heads < 1 || n_q_heads < 1 || n_q_heads % n_kv_heads != 0) {
    throw_invalid(where + ": n_q_heads " + std::to_string(n_q_heads) +
                  " must be a positive multiple of n_kv_heads " + std::to_string(n_kv_heads));
  }
  if (dim < 1) throw_invalid(where + ": head_dim " + std::to_string(dim) + " must be positive");
  if (!std::isfinite(options.scale) || options.scale < 0.0f) {
    throw_invalid(where + ": AttentionOptions.scale = " + std::to_string(options.scale) +
                  "; expected 0 (1/sqrt(head_dim)) or a positive finite value");
  }
  resolve_threads(options);
  const size_t count = n_queries * static_cast<size_t>(n_q_heads) * dim;
  for (size_t i = 0; i < count; ++i) {
    if (!std::isfinite(q[i])) {
      const size_t row = static_cast<size_t>(n_q_heads) * dim;
      throw_invalid(where + ": q of query " + std::to_string(i / row) + ", head " +
                    std::to_string(i % row / dim) + ", coordinate " + std::to_string(i % dim) +
                    " is not finite");
    }
  }
  return options.scale > 0.0f ? options.scale : 1.0f / std::sqrt(static_cast<float>(dim));
}

void reference_attention(const float* q, size_t n_queries, const float* k, const float* v,
                         size_t n_keys, int n_q_heads, int n_kv_heads, int dim, float scale,
                         float* out, size_t window) {
  const int g = n_q_heads / n_kv_heads;
  std::vector<double> scores(n_keys), acc(dim);
  for (size_t i = 0; i < n_queries; ++i) {
    const size_t limit = n_keys - n_queries + i + 1;
    const size_t start = window > 0 && limit > window ? limit - window : 0;
    for (int h = 0; h < n_q_heads; ++h) {
      const float* qh = q + (i * n_q_heads + h) * static_cast<size_t>(dim);
      const int kv = h / g;
      double m = -INFINITY;
      for (size_t t = start; t < limit; ++t) {
        const float* kt = k + (t * n_kv_heads + kv) * static_cast<size_t>(dim);
        double s = 0.0;
        for (int j = 0; j < dim; ++j) s += static_cast<double>(qh[j]) * kt[j];
        scores[t] = s * scale;
        m = std::max(m, scores[t]);
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      double l = 0.0;
      for (size_t t = start; t < limit; ++t) {
        const double p = std::exp(scores[t] - m);
        l += p;
        const float* vt = v + (t * n_kv_heads + kv) * static_cast<size_t>(dim);
        for (int j = 0; j < dim; ++j) acc[j] += p * vt[j];
      }
      float* o = out + (i * n_q_heads + h) * static_cast<size_t>(dim);
      for (int j = 0; j < dim; ++j) o[j] = static_cast<float>(acc[j] / l);
    }
  }
}

void cache_attention(const KvCache& cache, SequenceId seq, int layer, const float* q,
                     size_t n_queries, int n_q_heads, float* out, const AttentionOptions& options) {
  if (options.use_fused) {
    cache_attention_with(best_kernels(), cache, seq, layer, q, n_queries, n_q_heads, out, options);
    return;
  }
  const KvCache::Impl& m = cache.impl();
  const size_t length = m.layer(seq, layer, "cache_attention").length;
  const int dim = m.options.head_dim;
  const float scale = check_attention_args("cache_attention", q, n_queries, n_q_heads,
                                           m.options.n_kv_heads, dim, options);
  if (n_queries == 0) return;
  if (n_queries > length) {
    throw_invalid("cache_attention: " + std::to_string(n_queries) +
                  " queries but the sequence holds only " + std::to_string(length) +
                  " tokens at layer " + std::to_string(layer) + "; append the tokens first");
  }
  std::vector<float> k(length * m.row_floats), v(length * m.row_floats);
  cache.read(seq, layer, 0, length, k.data(), v.data());
  reference_attention(q, n_queries, k.data(), v.data(), length, n_q_heads, m.options.n_kv_heads,
                      dim, scale, out, options.window);
}

}  // namespace polarquant
