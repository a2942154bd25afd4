// The Llama forward pass on CPU over the quantized KV cache. Every token's keys and values go into
// polarquant::KvCache (with the codecs chosen by name), and attention, prefill included, reads them
// back through polarquant::cache_attention: a lossy codec therefore affects every position the way
// llama.cpp's quantized cache does.
#pragma once

#include "model/llama_model.h"

#include <polarquant/attention.h>
#include <polarquant/kv_cache.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace polarquant::model {

struct RuntimeOptions {
  std::string key_codec = "f16";
  std::string value_codec = "f16";
  std::string key_codebooks;    // KvCacheOptions::key_codebooks (PQCB file; empty: analytic)
  std::string value_codebooks;  // KvCacheOptions::value_codebooks
  uint64_t codec_seed = kDefaultSeed;
  int sink_tokens = 0;      // first tokens kept in full precision (see KvCacheOptions)
  int recent_tokens = 0;    // most recent tokens kept in full precision
  bool center_keys = true;  // KvCacheOptions::center_keys: exact, and a lossy codec errs less
  // KvCacheOptions::quantize_generated: false keeps tokens appended after the prompt (the first
  // append of a sequence) in full precision, as the paper's LongBench runs do.
  bool quantize_generated = true;
  int n_threads = 0;        // 0: OpenMP's default
  bool use_fused = true;    // false: decode-then-attend reference attention
  int prefill_chunk = 256;  // tokens per forward step during prefill (bounds activation memory)
};

// Called once per layer and step with the layer's queries (n x n_heads x head_dim), keys and values
// (n x n_kv_heads x head_dim), after RoPE: what `dump-kv` records.
using AttentionObserver =
    std::function<void(int layer, const float* q, const float* k, const float* v, size_t n)>;

class Transformer {
 public:
  // The model must outlive the transformer. Throws InvalidArgument when a codec does not suit the
  // model's head dimension.
  Transformer(const LlamaModel& model, const RuntimeOptions& options);

  const LlamaConfig& config() const { return model_.config(); }
  const RuntimeOptions& options() const { return options_; }
  KvCache& cache() { return *cache_; }
  const KvCache& cache() const { return *cache_; }

  SequenceId add_sequence() { return cache_->add_sequence(); }
  size_t position(SequenceId seq) const { return cache_->length(seq, 0); }

  // Runs n tokens of a sequence from its current position, storing their K/V in the cache. With
  // all_logits, logits gets n x vocab values (one row per token), else vocab values for the last
  // token. Tokens are processed in chunks of options.prefill_chunk. Throws InvalidArgument for an
  // out-of-vocabulary token or when the sequence would exceed the model's context.
  void forward(SequenceId seq, const int* tokens, size_t n, std::vector<float>& logits,
               bool all_logits);

  void set_observer(AttentionObserver observer) { observer_ = std::move(observer); }

 private:
  void forward_chunk(SequenceId seq, const int* tokens, size_t n, float* logits, bool all_logits);
  void apply_rope(float* x, size_t n, int n_heads, size_t first_position) const;

  const LlamaModel& model_;
  RuntimeOptions options_;
  std::unique_ptr<KvCache> cache_;
  AttentionOptions attention_;
  std::vector<float> inv_freq_;  // theta^(-2i/head_dim), i < head_dim/2
  AttentionObserver observer_;
};

// Scalar building blocks, exposed for tests.
void rms_norm(const float* x, const float* weight, int n, float eps, float* out);
void rope_rotate(float* x, int head_dim, int n_heads, size_t position, const float* inv_freq);

}  // namespace polarquant::model
