// The codec comparison harness behind `polarquant compare`: for each codec (or key/value codec
// pair, see codec_pair.h) it codes the keys and values of a set of attention heads and measures
// bits per coordinate, reconstruction NMSE, inner-product error, attention-output error and softmax
// KL against full-precision attention, and encode / decode-then-attend throughput.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "eval/kv_dump.h"

namespace polarquant {

// One attention context: the keys and values of one KV head and the queries that read them.
struct CompareHead {
  std::vector<float> k, v;         // tokens x dim
  std::vector<float> q;            // queries x dim
  std::vector<size_t> query_keys;  // per query: it attends to keys [0, query_keys[i])
  size_t tokens(int dim) const { return k.size() / static_cast<size_t>(dim); }
};

struct CompareData {
  int dim = 0;
  std::string source;  // what the data is, for the report
  std::vector<CompareHead> heads;
};

enum class GeneratedKind { kGaussian, kKeylike };

// One head of `count` tokens. Keys: standard Gaussian, or key-like (eval/synthetic.h: 4 outlier
// channels at 10x and a per-channel mean); values: standard Gaussian. Each query is the mean of 4
// keys drawn at random plus N(0, I) noise, scaled so that its scores q.k/sqrt(d) over the context
// have standard deviation 2.5 (a typical attention-logit spread); queries attend to every key.
CompareData generated_compare_data(GeneratedKind kind, int dim, size_t count, size_t n_queries,
                                   uint64_t seed);

// Every (layer, KV head) of the dump is a head. Its queries are the dump's queries of the last
// n_queries tokens, for each query head that shares the KV head (GQA), each attending causally to
// the keys up to its own position.
CompareData dump_compare_data(const KvDump& dump, size_t n_queries);

// The runtime's key centering (KvCacheOptions::center_keys) applied to compare data: each head's
// keys minus their per-channel mean over its first min(first_tokens, tokens) tokens (the runtime
// takes the mean of a sequence's first append, one prefill chunk). Softmax attention is unchanged
// exactly (every score of a query moves by q.mean), so the reference is the same, while a codec
// codes what the runtime's cache would. first_tokens = 0 throws InvalidArgument.
void center_compare_keys(CompareData& data, size_t first_tokens);

struct CompareOptions {
  std::vector<std::string> codecs;  // pair names (codec_pair.h); empty: default_compare_codecs()
  uint64_t seed = 0x5eed'9017'a2c0'0001ull;
  // Most recent tokens of each head kept in fp16 for every codec (KIVI's R); they count in the
  // bits.
  size_t recent_tokens = 0;
  // Minimum measured time per throughput figure.
  double min_seconds = 0.2;
};

struct CompareRow {
  std::string codec, key_codec, value_codec;
  double bits_per_coordinate = 0;  // keys and values together, fp16 tails and windows included
  double key_bits = 0, value_bits = 0;
  double compression_vs_fp16 = 0;
  double nmse = 0;  // (nmse_k + nmse_v) / 2
  double nmse_k = 0, nmse_v = 0;
  double inner_product_error = 0;     // queries against keys, relative RMS
  double attention_error = 0;         // relative RMS error of attention outputs
  double softmax_kl = 0;              // mean KL(p || p_hat) of attention weights, nats
  double encode_vectors_per_s = 0;    // key + value vectors encoded per second, one thread
  double attention_tokens_per_s = 0;  // cached tokens per second, decode-then-attend, one query
  // Cached tokens per second of cache_attention over a KvCache holding the first head, one query,
  // one thread: the fused kernel where the codec has one.
  double cache_attention_tokens_per_s = 0;
};

// Pair names compared by default: every pair name except the exact f32 reference.
std::vector<std::string> default_compare_codecs();

std::vector<CompareRow> run_compare(const CompareData& data, const CompareOptions& options);

}  // namespace polarquant
