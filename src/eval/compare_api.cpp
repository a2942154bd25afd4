// The public comparison entry points (include/polarquant/compare.h) over the internal harness.
#include <polarquant/compare.h>
#include <polarquant/error.h>

#include <cmath>
#include <string>

#include "eval/compare.h"

namespace polarquant {
namespace {

std::vector<CodecComparison> run(const CompareData& data, const CompareSettings& settings) {
  CompareOptions options;
  options.codecs = settings.codecs;
  options.seed = settings.codec_seed;
  options.recent_tokens = settings.recent_tokens;
  options.min_seconds = settings.min_seconds;
  std::vector<CodecComparison> out;
  for (const CompareRow& r : run_compare(data, options)) {
    CodecComparison c;
    c.codec = r.codec;
    c.key_codec = r.key_codec;
    c.value_codec = r.value_codec;
    c.bits_per_coordinate = r.bits_per_coordinate;
    c.key_bits = r.key_bits;
    c.value_bits = r.value_bits;
    c.compression_vs_fp16 = r.compression_vs_fp16;
    c.nmse = r.nmse;
    c.nmse_k = r.nmse_k;
    c.nmse_v = r.nmse_v;
    c.inner_product_error = r.inner_product_error;
    c.attention_error = r.attention_error;
    c.softmax_kl = r.softmax_kl;
    c.encode_vectors_per_s = r.encode_vectors_per_s;
    c.attention_tokens_per_s = r.attention_tokens_per_s;
    c.cache_attention_tokens_per_s = r.cache_attention_tokens_per_s;
    out.push_back(std::move(c));
  }
  return out;
}

void check_finite(const float* x, size_t n, const char* what) {
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) {
      throw_invalid(std::string("compare: ") + what + " value " + std::to_string(i) +
                    " is not finite");
    }
  }
}

}  // namespace

std::vector<CodecComparison> compare_codecs_generated(std::string_view data, int dim, size_t count,
                                                      size_t n_queries, uint64_t data_seed,
                                                      const CompareSettings& settings) {
  if (data != "gaussian" && data != "keylike") {
    throw_invalid("compare: data must be 'gaussian' or 'keylike', got '" + std::string(data) + "'");
  }
  return run(
      generated_compare_data(data == "keylike" ? GeneratedKind::kKeylike : GeneratedKind::kGaussian,
                             dim, count, n_queries, data_seed),
      settings);
}

std::vector<CodecComparison> compare_codecs(const float* k, const float* v, size_t tokens,
                                            const float* q, size_t n_queries, int dim,
                                            const CompareSettings& settings) {
  if (dim < 2 || dim > 65536) throw_invalid("compare: dim must be in 2..65536");
  if (tokens < 1 || n_queries < 1) throw_invalid("compare: need at least one token and one query");
  const size_t d = static_cast<size_t>(dim);
  check_finite(k, tokens * d, "key");
  check_finite(v, tokens * d, "value");
  check_finite(q, n_queries * d, "query");
  CompareData data;
  data.dim = dim;
  data.source = "caller's head, " + std::to_string(tokens) + " tokens, d = " + std::to_string(dim) +
                ", " + std::to_string(n_queries) + " queries";
  CompareHead head;
  head.k.assign(k, k + tokens * d);
  head.v.assign(v, v + tokens * d);
  head.q.assign(q, q + n_queries * d);
  head.query_keys.assign(n_queries, tokens);
  data.heads.push_back(std::move(head));
  return run(data, settings);
}

}  // namespace polarquant
