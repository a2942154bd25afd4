#include "model/transformer.h"

#include <polarquant/error.h>
#include <polarquant/polar_codec.h>

#include <algorithm>
#include <cmath>

namespace polarquant::model {

void rms_norm(const float* x, const float* weight, int n, float eps, float* out) {
  double ss = 0.0;
  for (int i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float scale = static_cast<float>(1.0 / std::sqrt(ss / n + eps));
  for (int i = 0; i < n; ++i) out[i] = x[i] * scale * weight[i];
}

// Rotates adjacent pairs (2i, 2i+1) of each head: llama2.c's convention, and ggml's "normal" RoPE
// that GGUF llama files are converted for (their Q/K rows are permuted from HF's half-split
// layout).
void rope_rotate(float* x, int head_dim, int n_heads, size_t position, const float* inv_freq) {
  for (int i = 0; i < head_dim / 2; ++i) {
    const double angle = static_cast<double>(position) * inv_freq[i];
    const float c = static_cast<float>(std::cos(angle));
    const float s = static_cast<float>(std::sin(angle));
    for (int h = 0; h < n_heads; ++h) {
      float* p = x + h * head_dim + 2 * i;
      const float a = p[0], b = p[1];
      p[0] = a * c - b * s;
      p[1] = a * s + b * c;
    }
  }
}

void rope_rotate_neox(float* x, int head_dim, int n_heads, size_t position, const float* inv_freq) {
  const int half = head_dim / 2;
  for (int i = 0; i < half; ++i) {
    const double angle = static_cast<double>(position) * inv_freq[i];
    const float c = static_cast<float>(std::cos(angle));
    const float s = static_cast<float>(std::sin(angle));
    for (int h = 0; h < n_heads; ++h) {
      float* p = x + h * head_dim + i;
      const float a = p[0], b = p[half];
      p[0] = a * c - b * s;
      p[half] = a * s + b * c;
    }
  }
}

float gelu_tanh(float x) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  return 0.5f * x * (1.0f + std::tanh(kSqrt2OverPi * (x + 0.044715f * x * x * x)));
}

Transformer::Transformer(const LlamaModel& model, const RuntimeOptions& options)
    : model_(model), options_(options) {
  const LlamaConfig& c = model.config();
  KvCacheOptions kv;
  kv.n_layers = c.n_layers;
  kv.n_kv_heads = c.n_kv_heads;
  kv.head_dim = c.head_dim;
  kv.key_codec = options.key_codec;
  kv.value_codec = options.value_codec;
  kv.seed = options.codec_seed;
  // Codebook files are for the PolarQuant runs; the fp16 reference runs of perplexity, generate
  // and niah share the options and keep their codec (the CLI refuses a file for a non-PolarQuant
  // codec the user chose, and KvCache refuses it for direct use).
  if (is_polar_codec_name(options.key_codec)) kv.key_codebooks = options.key_codebooks;
  if (is_polar_codec_name(options.value_codec)) kv.value_codebooks = options.value_codebooks;
  kv.online_codebooks = options.online_codebooks && (is_polar_codec_name(options.key_codec) ||
                                                     is_polar_codec_name(options.value_codec));
  kv.sink_tokens = options.sink_tokens;
  kv.recent_tokens = options.recent_tokens;
  kv.center_keys = options.center_keys;
  kv.quantize_generated = options.quantize_generated;
  inv_freq_.resize(static_cast<size_t>(c.head_dim / 2));
  for (int i = 0; i < c.head_dim / 2; ++i) {
    inv_freq_[i] =
        static_cast<float>(std::pow(static_cast<double>(c.rope_theta), -2.0 * i / c.head_dim));
  }
  if (c.arch == Architecture::kGemma3) {
    inv_freq_local_.resize(inv_freq_.size());
    for (int i = 0; i < c.head_dim / 2; ++i) {
      inv_freq_local_[i] = static_cast<float>(
          std::pow(static_cast<double>(c.rope_theta_local), -2.0 * i / c.head_dim));
    }
  }
  // RoPE-aware key centering refines the one mean: with it off (--no-center-keys) there is none.
  // Llama: one set of frequencies, rope_rotate's interleaved pairs. Gemma 3: rope_rotate_neox's
  // pairs and one set per layer, its local layers' base or the global one, as
  // forward_chunk_gemma3 rotates them.
  if (options.rope_center_keys && options.center_keys) {
    if (c.arch == Architecture::kGemma3) {
      kv.key_rope_neox = true;
      for (int l = 0; l < c.n_layers; ++l) {
        const auto& set = c.is_local_layer(l) ? inv_freq_local_ : inv_freq_;
        kv.key_rope_inv_freq.insert(kv.key_rope_inv_freq.end(), set.begin(), set.end());
      }
    } else {
      kv.key_rope_inv_freq = inv_freq_;
    }
  }
  cache_ = std::make_unique<KvCache>(kv);
  attention_.n_threads = options.n_threads;
  attention_.use_fused = options.use_fused;
  if (options_.prefill_chunk <= 0) throw_invalid("prefill_chunk must be positive");
  if (c.arch == Architecture::kGemma3) attention_.scale = c.attention_scale;
}

void Transformer::apply_rope(float* x, size_t n, int n_heads, size_t first_position) const {
  const int hd = config().head_dim;
  for (size_t t = 0; t < n; ++t)
    rope_rotate(x + t * n_heads * hd, hd, n_heads, first_position + t, inv_freq_.data());
}

void Transformer::forward(SequenceId seq, const int* tokens, size_t n, std::vector<float>& logits,
                          bool all_logits) {
  const LlamaConfig& c = config();
  check_forward_input(c, position(seq), tokens, n);
  const size_t vocab = static_cast<size_t>(c.vocab_size);
  logits.resize(all_logits ? n * vocab : vocab);
  for (size_t start = 0; start < n; start += static_cast<size_t>(options_.prefill_chunk)) {
    const size_t m = std::min(n - start, static_cast<size_t>(options_.prefill_chunk));
    const bool last_chunk = start + m == n;
    if (all_logits) {
      forward_chunk(seq, tokens + start, m, logits.data() + start * vocab, true);
    } else {
      forward_chunk(seq, tokens + start, m, last_chunk ? logits.data() : nullptr, false);
    }
  }
}

void Transformer::forward_chunk(SequenceId seq, const int* tokens, size_t n, float* logits,
                                bool all_logits) {
  if (config().arch == Architecture::kGemma3) {
    forward_chunk_gemma3(seq, tokens, n, logits, all_logits);
    return;
  }
  const LlamaConfig& c = config();
  const size_t dim = c.dim, qd = c.q_dim(), kvd = c.kv_dim(), hid = c.hidden_dim;
  const int threads = options_.n_threads;
  const size_t pos = position(seq);
  std::vector<float> x(n * dim), xn(n * dim), q(n * qd), k(n * kvd), v(n * kvd), att(n * qd),
      proj(n * dim);
  std::vector<float> gate(n * hid), up(n * hid);
  for (size_t t = 0; t < n; ++t)
    dequantize_rows(model_.token_embedding(), tokens[t], 1, x.data() + t * dim);

  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& w = model_.layers()[l];
    for (size_t t = 0; t < n; ++t)
      rms_norm(x.data() + t * dim, w.attn_norm.data(), c.dim, c.rms_eps, xn.data() + t * dim);
    matmul(w.wq, xn.data(), n, q.data(), threads);
    matmul(w.wk, xn.data(), n, k.data(), threads);
    matmul(w.wv, xn.data(), n, v.data(), threads);
    apply_rope(q.data(), n, c.n_heads, pos);
    apply_rope(k.data(), n, c.n_kv_heads, pos);
    if (observer_) observer_(l, q.data(), k.data(), v.data(), n);
    cache_->append(seq, l, k.data(), v.data(), n);
    cache_attention(*cache_, seq, l, q.data(), n, c.n_heads, att.data(), attention_);
    matmul(w.wo, att.data(), n, proj.data(), threads);
    for (size_t i = 0; i < n * dim; ++i) x[i] += proj[i];

    for (size_t t = 0; t < n; ++t)
      rms_norm(x.data() + t * dim, w.ffn_norm.data(), c.dim, c.rms_eps, xn.data() + t * dim);
    matmul(w.w_gate, xn.data(), n, gate.data(), threads);
    matmul(w.w_up, xn.data(), n, up.data(), threads);
    for (size_t i = 0; i < n * hid; ++i) {
      const float g = gate[i];
      gate[i] = g / (1.0f + std::exp(-g)) * up[i];  // SwiGLU: silu(gate) * up
    }
    matmul(w.w_down, gate.data(), n, proj.data(), threads);
    for (size_t i = 0; i < n * dim; ++i) x[i] += proj[i];
  }
  if (logits != nullptr) output_logits(x.data(), n, all_logits, xn.data(), logits);
}

void Transformer::output_logits(const float* x, size_t n, bool all_logits, float* xn,
                                float* logits) const {
  const LlamaConfig& c = config();
  const size_t dim = c.dim;
  const size_t first = all_logits ? 0 : n - 1;
  const size_t rows = n - first;
  for (size_t t = first; t < n; ++t) {
    rms_norm(x + t * dim, model_.final_norm().data(), c.dim, c.rms_eps, xn + (t - first) * dim);
  }
  matmul(model_.output(), xn, rows, logits, options_.n_threads);
  if (c.final_logit_softcap > 0.0f) {
    const float cap = c.final_logit_softcap;
    for (size_t i = 0; i < rows * static_cast<size_t>(c.vocab_size); ++i)
      logits[i] = cap * std::tanh(logits[i] / cap);
  }
}

}  // namespace polarquant::model
