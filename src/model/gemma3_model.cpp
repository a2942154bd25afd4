// Gemma 3 from GGUF (llama.cpp's `gemma3` architecture, as written by convert_hf_to_gguf.py): the
// hyperparameters under gemma3.*, and the tensors of the llama layout plus attn_q_norm/attn_k_norm
// (per-head RMSNorm of Q and K), post_attention_norm and post_ffw_norm. The converter stores the
// RMSNorm weights with Gemma's "+1" already added, so they are used as they are. The output head
// is the token embedding (tied).
#include "model/gguf_weights.h"
#include "model/llama_model.h"

#include <polarquant/error.h>

#include <cmath>

namespace polarquant::model {

using detail::checked_int;
using detail::matrix_from;
using detail::vector_from;

namespace {

// llama.cpp (llama-model.cpp, LLM_ARCH_GEMMA3) hard-codes one global layer in every 6 when the
// file has no sliding_window_pattern key; Gemma 3's config.json has sliding_window_pattern = 6.
constexpr int kDefaultSlidingWindowPattern = 6;

}  // namespace

LlamaModel LlamaModel::from_gguf_gemma3(const GgufFile& f) {
  const std::string& label = f.label();
  const std::string p = "gemma3.";
  auto get_int = [&](const std::string& key, int64_t max_value) {
    return checked_int(f.get_uint(p + key), p + key, label, max_value);
  };
  constexpr int64_t kMaxDim = 1 << 16;
  LlamaConfig c;
  c.arch = Architecture::kGemma3;
  c.dim = get_int("embedding_length", kMaxDim);
  c.n_layers = get_int("block_count", 1024);
  c.hidden_dim = get_int("feed_forward_length", 1 << 18);
  c.n_heads = get_int("attention.head_count", 1024);
  c.n_kv_heads =
      f.has(p + "attention.head_count_kv") ? get_int("attention.head_count_kv", 1024) : c.n_heads;
  c.context_length = get_int("context_length", 1 << 24);
  // Gemma's head dimension is not dim / heads (270M: 640 / 4 = 160, head_dim 256): it comes from
  // key_length, which must equal value_length.
  c.head_dim = get_int("attention.key_length", 4096);
  if (f.has(p + "attention.value_length") &&
      get_int("attention.value_length", 4096) != c.head_dim) {
    throw Error(ErrorKind::kUnsupported,
                "GGUF '" + label + "': gemma3 key_length " + std::to_string(c.head_dim) +
                    " differs from value_length " +
                    std::to_string(f.get_uint(p + "attention.value_length")));
  }
  if (c.n_heads % c.n_kv_heads != 0 || c.head_dim % 2 != 0) {
    throw_format("GGUF '" + label + "': head_count " + std::to_string(c.n_heads) +
                 " is not a multiple of head_count_kv " + std::to_string(c.n_kv_heads) +
                 ", or head dimension " + std::to_string(c.head_dim) + " is odd");
  }
  c.rms_eps = static_cast<float>(f.get_float(p + "attention.layer_norm_rms_epsilon"));
  c.rope_theta = f.has(p + "rope.freq_base") ? static_cast<float>(f.get_float(p + "rope.freq_base"))
                                             : 1000000.0f;
  c.rope_theta_local = f.has(p + "rope.freq_base_swa")
                           ? static_cast<float>(f.get_float(p + "rope.freq_base_swa"))
                           : 10000.0f;
  if (!(c.rms_eps > 0.0f && c.rms_eps < 1.0f) || !(c.rope_theta > 1.0f && c.rope_theta < 1e9f) ||
      !(c.rope_theta_local > 1.0f && c.rope_theta_local < 1e9f)) {
    throw_format("GGUF '" + label +
                 "': rms epsilon, rope.freq_base or rope.freq_base_swa is out "
                 "of range");
  }
  if (f.has(p + "rope.scaling.type") && f.get_string(p + "rope.scaling.type") != "none") {
    throw Error(ErrorKind::kUnsupported, "GGUF '" + label + "': gemma3 rope.scaling.type '" +
                                             f.get_string(p + "rope.scaling.type") +
                                             "' is not supported (only unscaled RoPE)");
  }
  if (f.has(p + "attention.sliding_window")) {
    c.sliding_window = get_int("attention.sliding_window", 1 << 24);
    c.sliding_window_pattern = f.has(p + "attention.sliding_window_pattern")
                                   ? get_int("attention.sliding_window_pattern", 1024)
                                   : kDefaultSlidingWindowPattern;
  }
  // The query scale is 1/sqrt(query_pre_attn_scalar) (Gemma 3: query_pre_attn_scalar = head_dim).
  if (f.has(p + "attention.query_pre_attn_scalar")) {
    const double s = f.get_float(p + "attention.query_pre_attn_scalar");
    if (!(s > 0.0 && s < 1e9)) {
      throw_format("GGUF '" + label + "': attention.query_pre_attn_scalar is out of range");
    }
    c.attention_scale = static_cast<float>(1.0 / std::sqrt(s));
  }
  if (f.has(p + "final_logit_softcapping")) {
    c.final_logit_softcap = static_cast<float>(f.get_float(p + "final_logit_softcapping"));
    if (!(c.final_logit_softcap >= 0.0f && c.final_logit_softcap < 1e6f)) {
      throw_format("GGUF '" + label + "': final_logit_softcapping is out of range");
    }
  }
  c.embedding_scale = std::sqrt(static_cast<float>(c.dim));

  LlamaModel m;
  m.format_ = "gguf";
  m.token_embedding_ = detail::token_embedding_from(f, c.dim, &c.vocab_size);
  m.config_ = c;
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    LayerWeights w;
    w.attn_norm = vector_from(f, b + "attn_norm.weight", c.dim);
    w.wq = matrix_from(f, b + "attn_q.weight", c.dim, c.q_dim());
    w.wk = matrix_from(f, b + "attn_k.weight", c.dim, c.kv_dim());
    w.wv = matrix_from(f, b + "attn_v.weight", c.dim, c.kv_dim());
    w.q_norm = vector_from(f, b + "attn_q_norm.weight", c.head_dim);
    w.k_norm = vector_from(f, b + "attn_k_norm.weight", c.head_dim);
    w.wo = matrix_from(f, b + "attn_output.weight", c.q_dim(), c.dim);
    w.post_attn_norm = vector_from(f, b + "post_attention_norm.weight", c.dim);
    w.ffn_norm = vector_from(f, b + "ffn_norm.weight", c.dim);
    w.w_gate = matrix_from(f, b + "ffn_gate.weight", c.dim, c.hidden_dim);
    w.w_up = matrix_from(f, b + "ffn_up.weight", c.dim, c.hidden_dim);
    w.w_down = matrix_from(f, b + "ffn_down.weight", c.hidden_dim, c.dim);
    w.post_ffn_norm = vector_from(f, b + "post_ffw_norm.weight", c.dim);
    m.layers_.push_back(std::move(w));
  }
  m.final_norm_ = vector_from(f, "output_norm.weight", c.dim);
  if (f.find_tensor("output.weight") != nullptr) {
    m.output_ = matrix_from(f, "output.weight", c.dim, c.vocab_size);
  } else {
    m.output_ = m.token_embedding_;
    m.tied_output_ = true;
  }
  return m;
}

}  // namespace polarquant::model
