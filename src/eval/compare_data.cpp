// Data sets for the comparison harness: generated heads and heads read from a K/V dump.
#include <polarquant/error.h>

#include <algorithm>
#include <cmath>

#include "core/random.h"
#include "eval/compare.h"
#include "eval/synthetic.h"

namespace polarquant {

CompareData generated_compare_data(GeneratedKind kind, int dim, size_t count, size_t n_queries,
                                   uint64_t seed) {
  if (dim < 2 || dim > 65536)
    throw_invalid("compare: --dim " + std::to_string(dim) + " must be in 2..65536");
  if (count < 1) throw_invalid("compare: --count must be >= 1");
  if (n_queries < 1) throw_invalid("compare: --queries must be >= 1");
  const size_t d = static_cast<size_t>(dim);
  CompareData data;
  data.dim = dim;
  data.source = std::string(kind == GeneratedKind::kKeylike ? "keylike" : "gaussian") +
                " keys, gaussian values, " + std::to_string(count) +
                " tokens, d = " + std::to_string(dim) + ", " + std::to_string(n_queries) +
                " queries";
  CompareHead head;
  head.k = kind == GeneratedKind::kKeylike ? keylike_data(count, dim, seed)
                                           : gaussian_data(count, dim, seed);
  head.v = gaussian_data(count, dim, seed + 1);
  Rng rng(seed + 2);
  head.q.resize(n_queries * d);
  std::vector<double> q(d);
  for (size_t a = 0; a < n_queries; ++a) {
    for (size_t j = 0; j < d; ++j) q[j] = rng.gaussian();
    for (int pick = 0; pick < 4; ++pick) {
      const float* key = head.k.data() + rng.below(count) * d;
      for (size_t j = 0; j < d; ++j) q[j] += 0.25 * key[j];
    }
    // Scale to a score spread of 2.5 over the context.
    double sum = 0.0, sum_sq = 0.0;
    for (size_t i = 0; i < count; ++i) {
      double s = 0.0;
      for (size_t j = 0; j < d; ++j) s += q[j] * head.k[i * d + j];
      s /= std::sqrt(static_cast<double>(dim));
      sum += s;
      sum_sq += s * s;
    }
    const double mean = sum / static_cast<double>(count);
    const double sd = std::sqrt(std::max(0.0, sum_sq / static_cast<double>(count) - mean * mean));
    const double factor = sd > 0.0 ? 2.5 / sd : 1.0;
    for (size_t j = 0; j < d; ++j) head.q[a * d + j] = static_cast<float>(q[j] * factor);
    head.query_keys.push_back(count);
  }
  data.heads.push_back(std::move(head));
  return data;
}

CompareData dump_compare_data(const KvDump& dump, size_t n_queries) {
  dump.validate();
  if (n_queries < 1) throw_invalid("compare: --queries must be >= 1");
  const size_t d = static_cast<size_t>(dump.head_dim);
  const size_t tokens = static_cast<size_t>(dump.n_tokens);
  const size_t first = tokens > n_queries ? tokens - n_queries : 0;
  const int group = dump.n_q_heads / dump.n_kv_heads;
  CompareData data;
  data.dim = dump.head_dim;
  data.source = "K/V dump (" + dump.description + "): " + std::to_string(dump.layers.size()) +
                " layers x " + std::to_string(dump.n_kv_heads) + " KV heads, " +
                std::to_string(tokens) + " tokens, d = " + std::to_string(dump.head_dim) +
                ", queries of the last " + std::to_string(tokens - first) + " tokens x " +
                std::to_string(group) + " query heads per KV head, causal";
  for (const auto& layer : dump.layers) {
    for (int h = 0; h < dump.n_kv_heads; ++h) {
      CompareHead head;
      head.k.resize(tokens * d);
      head.v.resize(tokens * d);
      for (size_t t = 0; t < tokens; ++t) {
        const size_t src = t * dump.kv_row() + static_cast<size_t>(h) * d;
        std::copy_n(layer.k.data() + src, d, head.k.data() + t * d);
        std::copy_n(layer.v.data() + src, d, head.v.data() + t * d);
      }
      for (size_t t = first; t < tokens; ++t) {
        for (int g = 0; g < group; ++g) {
          const size_t src = t * dump.q_row() + static_cast<size_t>(h * group + g) * d;
          head.q.insert(head.q.end(), layer.q.data() + src, layer.q.data() + src + d);
          head.query_keys.push_back(t + 1);
        }
      }
      data.heads.push_back(std::move(head));
    }
  }
  return data;
}

void center_compare_keys(CompareData& data, size_t first_tokens) {
  if (first_tokens == 0) throw_invalid("compare: key centering needs at least one token");
  const size_t d = static_cast<size_t>(data.dim);
  std::vector<double> mean(d);
  for (auto& head : data.heads) {
    const size_t n = std::min(first_tokens, head.tokens(data.dim));
    if (n == 0) continue;
    std::fill(mean.begin(), mean.end(), 0.0);
    for (size_t t = 0; t < n; ++t) {
      for (size_t c = 0; c < d; ++c) mean[c] += head.k[t * d + c];
    }
    for (size_t t = 0; t < head.tokens(data.dim); ++t) {
      for (size_t c = 0; c < d; ++c) {
        head.k[t * d + c] -= static_cast<float>(mean[c] / static_cast<double>(n));
      }
    }
  }
  data.source += "; keys centered on their first " + std::to_string(first_tokens) + " tokens";
}

}  // namespace polarquant
