// The Llama and Gemma 3 forward passes on CPU over the quantized KV cache. Every token's keys and
// values go into polarquant::KvCache (with the codecs chosen by name), and attention, prefill
// included, reads them back through polarquant::cache_attention: a lossy codec therefore affects
// every position the way llama.cpp's quantized cache does.
#pragma once

#include "model/llama_model.h"
#include "model/runtime.h"

#include <polarquant/attention.h>
#include <polarquant/kv_cache.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace polarquant::model {

// Called once per layer and step with the layer's queries (n x n_heads x head_dim), keys and values
// (n x n_kv_heads x head_dim), after RoPE: what `dump-kv` records.
using AttentionObserver =
    std::function<void(int layer, const float* q, const float* k, const float* v, size_t n)>;

class Transformer : public Runtime {
 public:
  // The model must outlive the transformer. Throws InvalidArgument when a codec does not suit the
  // model's head dimension.
  Transformer(const LlamaModel& model, const RuntimeOptions& options);

  const LlamaConfig& config() const override { return model_.config(); }
  const RuntimeOptions& options() const override { return options_; }
  std::string device_name() const override { return "cpu"; }
  KvCache& cache() { return *cache_; }
  const KvCache& cache() const { return *cache_; }

  SequenceId add_sequence() override { return cache_->add_sequence(); }
  void free_sequence(SequenceId seq) override { cache_->free_sequence(seq); }
  size_t position(SequenceId seq) const override { return cache_->length(seq, 0); }
  KvMemoryStats memory() const override { return cache_->memory(); }

  // Runs n tokens of a sequence from its current position, storing their K/V in the cache. With
  // all_logits, logits gets n x vocab values (one row per token), else vocab values for the last
  // token. Tokens are processed in chunks of options.prefill_chunk. Throws InvalidArgument for an
  // out-of-vocabulary token or when the sequence would exceed the model's context.
  void forward(SequenceId seq, const int* tokens, size_t n, std::vector<float>& logits,
               bool all_logits) override;

  void set_observer(AttentionObserver observer) { observer_ = std::move(observer); }

 private:
  void forward_chunk(SequenceId seq, const int* tokens, size_t n, float* logits, bool all_logits);
  // Gemma 3's layers (transformer_gemma3.cpp), same contract as forward_chunk.
  void forward_chunk_gemma3(SequenceId seq, const int* tokens, size_t n, float* logits,
                            bool all_logits);
  void apply_rope(float* x, size_t n, int n_heads, size_t first_position) const;
  // The final norm and output projection of a chunk's residual stream x (n rows): every row with
  // all_logits, else the last; xn is scratch of n x dim floats. Soft-caps when the model does.
  void output_logits(const float* x, size_t n, bool all_logits, float* xn, float* logits) const;

  const LlamaModel& model_;
  RuntimeOptions options_;
  std::unique_ptr<KvCache> cache_;
  AttentionOptions attention_;
  std::vector<float> inv_freq_;        // theta^(-2i/head_dim), i < head_dim/2
  std::vector<float> inv_freq_local_;  // the same with rope_theta_local (Gemma 3's local layers)
  AttentionObserver observer_;
};

// Scalar building blocks, exposed for tests.
void rms_norm(const float* x, const float* weight, int n, float eps, float* out);
void rope_rotate(float* x, int head_dim, int n_heads, size_t position, const float* inv_freq);
// ggml's NEOX RoPE (HF's rotate_half), which gemma3 GGUFs use: pairs (i, i + head_dim/2).
void rope_rotate_neox(float* x, int head_dim, int n_heads, size_t position, const float* inv_freq);
// GELU with the tanh approximation (gelu_pytorch_tanh).
float gelu_tanh(float x);

}  // namespace polarquant::model
