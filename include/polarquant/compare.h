// The codec comparison harness of `polarquant compare` for other front ends (the Python module):
// every codec (or key/value pair name, codec_pair.h) codes the keys and values of one attention
// head and is measured against full-precision attention. A small, stable view of the internal
// harness (src/eval/compare.h); the figures are the same for the same data.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <polarquant/codec.h>

namespace polarquant {

struct CompareSettings {
  std::vector<std::string> codecs;  // pair names; empty: every pair name except f32
  uint64_t codec_seed = kDefaultSeed;
  size_t recent_tokens = 0;  // most recent tokens kept in fp16 for every codec (counted in bits)
  double min_seconds = 0.2;  // minimum measured time per throughput figure
};

struct CodecComparison {
  std::string codec, key_codec, value_codec;
  double bits_per_coordinate = 0, key_bits = 0, value_bits = 0, compression_vs_fp16 = 0;
  double nmse = 0, nmse_k = 0, nmse_v = 0;
  double inner_product_error = 0;  // queries against keys, relative RMS
  double attention_error = 0;      // relative RMS error of attention outputs
  double softmax_kl = 0;           // mean KL(p || p_hat) of attention weights, nats
  double encode_vectors_per_s = 0, attention_tokens_per_s = 0, cache_attention_tokens_per_s = 0;
};

// The data of `polarquant compare --data gaussian|keylike --dim D --count N --queries Q --seed S`.
// Throws InvalidArgument for another data name or bad sizes.
std::vector<CodecComparison> compare_codecs_generated(std::string_view data, int dim, size_t count,
                                                      size_t n_queries, uint64_t data_seed,
                                                      const CompareSettings& settings);

// One head given by the caller: k and v are tokens x dim, q is n_queries x dim (row after row);
// every query attends to every key. Throws InvalidArgument for empty or non-finite input.
std::vector<CodecComparison> compare_codecs(const float* k, const float* v, size_t tokens,
                                            const float* q, size_t n_queries, int dim,
                                            const CompareSettings& settings);

}  // namespace polarquant
