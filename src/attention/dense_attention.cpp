// Causal attention over full-precision K/V (prefill before the tokens are stored): one
// online-softmax pass per (query, head) with the same row kernels as the cache's full-precision
// runs.
#include <polarquant/attention.h>
#include <polarquant/error.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "attention/attention_internal.h"

namespace polarquant {

void dense_causal_attention(const float* q, const float* k, const float* v, size_t n_tokens,
                            int n_q_heads, int n_kv_heads, int head_dim, float* out,
                            const AttentionOptions& options) {
  const float scale = check_attention_args("dense_causal_attention", q, n_tokens, n_q_heads,
                                           n_kv_heads, head_dim, options);
  if (options.window > 0) {
    throw_invalid(
        "dense_causal_attention: AttentionOptions.window = " + std::to_string(options.window) +
        " is not supported here (sliding-window attention is cache_attention's)");
  }
  if (n_tokens == 0) return;
  const size_t row = static_cast<size_t>(n_kv_heads) * head_dim;
  const size_t kv_count = n_tokens * row;
  for (size_t i = 0; i < kv_count; ++i) {
    if (!std::isfinite(k[i]) || !std::isfinite(v[i])) {
      throw_invalid(std::string("dense_causal_attention: ") + (std::isfinite(k[i]) ? "v" : "k") +
                    " of token " + std::to_string(i / row) + ", kv head " +
                    std::to_string(i % row / head_dim) + " is not finite");
    }
  }
  if (!options.use_fused) {
    reference_attention(q, n_tokens, k, v, n_tokens, n_q_heads, n_kv_heads, head_dim, scale, out);
    return;
  }
  const KernelSet& kernels = best_kernels();
  const int threads = resolve_threads(options);
  const int g = n_q_heads / n_kv_heads;
  constexpr size_t kTile = 64;
  const long long items = static_cast<long long>(n_tokens) * n_kv_heads;
#pragma omp parallel num_threads(threads) if (threads > 1 && items > 1)
  {
    std::vector<float> scores(g * kTile), qs(static_cast<size_t>(g) * head_dim);
    std::vector<float> m(g), l(g), acc(static_cast<size_t>(g) * head_dim);
#pragma omp for schedule(dynamic, 4)
    for (long long item = 0; item < items; ++item) {
      const size_t i = static_cast<size_t>(item / n_kv_heads);
      const int kv = static_cast<int>(item % n_kv_heads);
      const float* qh = q + (i * n_q_heads + static_cast<size_t>(kv) * g) * head_dim;
      for (size_t j = 0; j < qs.size(); ++j) qs[j] = qh[j] * scale;
      std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
      std::fill(l.begin(), l.end(), 0.0f);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (size_t t0 = 0; t0 <= i; t0 += kTile) {
        const size_t n = std::min(kTile, i + 1 - t0);
        const float* kt = k + t0 * row + static_cast<size_t>(kv) * head_dim;
        const float* vt = v + t0 * row + static_cast<size_t>(kv) * head_dim;
        kernels.score_f32(qs.data(), g, head_dim, kt, row, n, scores.data(), kTile);
        for (int h = 0; h < g; ++h) {
          const float alpha = kernels.softmax(&scores[h * kTile], n, &m[h], &l[h]);
          if (alpha != 1.0f) {
            for (int j = 0; j < head_dim; ++j) acc[h * head_dim + j] *= alpha;
          }
        }
        kernels.value_f32(scores.data(), kTile, g, head_dim, vt, row, n, acc.data());
      }
      float* o = out + (i * n_q_heads + static_cast<size_t>(kv) * g) * head_dim;
      for (int h = 0; h < g; ++h) {
        for (int j = 0; j < head_dim; ++j) o[h * head_dim + j] = acc[h * head_dim + j] / l[h];
      }
    }
  }
}

}  // namespace polarquant
