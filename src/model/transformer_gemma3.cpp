// Gemma 3's forward pass (llama.cpp's gemma3 graph, HF's Gemma3ForCausalLM): token embeddings
// scaled by sqrt(dim); per layer RMSNorm -> Q/K/V, per-head RMSNorm of Q and K, NEOX RoPE (local
// layers with their own base), attention over the cache (a sliding window on the local layers),
// RMSNorm of the attention output before the residual add, then RMSNorm -> GELU(tanh)-gated MLP ->
// RMSNorm before the second residual add; final RMSNorm and the tied head, with optional logit
// soft-capping. Local layers keep every token in the KV cache and mask in attention, so the cache
// codecs apply to all layers alike.
#include "model/transformer.h"

#include <cmath>

namespace polarquant::model {

void Transformer::forward_chunk_gemma3(SequenceId seq, const int* tokens, size_t n, float* logits,
                                       bool all_logits) {
  const LlamaConfig& c = config();
  const size_t dim = c.dim, qd = c.q_dim(), kvd = c.kv_dim(), hid = c.hidden_dim;
  const int hd = c.head_dim;
  const int threads = options_.n_threads;
  const size_t pos = position(seq);
  std::vector<float> x(n * dim), xn(n * dim), q(n * qd), k(n * kvd), v(n * kvd), att(n * qd),
      proj(n * dim);
  std::vector<float> gate(n * hid), up(n * hid);
  for (size_t t = 0; t < n; ++t)
    dequantize_rows(model_.token_embedding(), tokens[t], 1, x.data() + t * dim);
  for (float& e : x) e *= c.embedding_scale;

  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& w = model_.layers()[l];
    const bool local = c.is_local_layer(l);
    for (size_t t = 0; t < n; ++t)
      rms_norm(x.data() + t * dim, w.attn_norm.data(), c.dim, c.rms_eps, xn.data() + t * dim);
    matmul(w.wq, xn.data(), n, q.data(), threads);
    matmul(w.wk, xn.data(), n, k.data(), threads);
    matmul(w.wv, xn.data(), n, v.data(), threads);
    for (size_t i = 0; i < n * c.n_heads; ++i) {
      float* head = q.data() + i * hd;
      rms_norm(head, w.q_norm.data(), hd, c.rms_eps, head);
    }
    for (size_t i = 0; i < n * c.n_kv_heads; ++i) {
      float* head = k.data() + i * hd;
      rms_norm(head, w.k_norm.data(), hd, c.rms_eps, head);
    }
    const float* inv_freq = local ? inv_freq_local_.data() : inv_freq_.data();
    for (size_t t = 0; t < n; ++t) {
      rope_rotate_neox(q.data() + t * qd, hd, c.n_heads, pos + t, inv_freq);
      rope_rotate_neox(k.data() + t * kvd, hd, c.n_kv_heads, pos + t, inv_freq);
    }
    if (observer_) observer_(l, q.data(), k.data(), v.data(), n);
    cache_->append(seq, l, k.data(), v.data(), n);
    AttentionOptions layer_attention = attention_;
    layer_attention.window = local ? static_cast<size_t>(c.sliding_window) : 0;
    cache_attention(*cache_, seq, l, q.data(), n, c.n_heads, att.data(), layer_attention);
    matmul(w.wo, att.data(), n, proj.data(), threads);
    for (size_t t = 0; t < n; ++t) {
      float* p = proj.data() + t * dim;
      rms_norm(p, w.post_attn_norm.data(), c.dim, c.rms_eps, p);
    }
    for (size_t i = 0; i < n * dim; ++i) x[i] += proj[i];

    for (size_t t = 0; t < n; ++t)
      rms_norm(x.data() + t * dim, w.ffn_norm.data(), c.dim, c.rms_eps, xn.data() + t * dim);
    matmul(w.w_gate, xn.data(), n, gate.data(), threads);
    matmul(w.w_up, xn.data(), n, up.data(), threads);
    for (size_t i = 0; i < n * hid; ++i) gate[i] = gelu_tanh(gate[i]) * up[i];
    matmul(w.w_down, gate.data(), n, proj.data(), threads);
    for (size_t t = 0; t < n; ++t) {
      float* p = proj.data() + t * dim;
      rms_norm(p, w.post_ffn_norm.data(), c.dim, c.rms_eps, p);
    }
    for (size_t i = 0; i < n * dim; ++i) x[i] += proj[i];
  }
  if (logits != nullptr) output_logits(x.data(), n, all_logits, xn.data(), logits);
}

}  // namespace polarquant::model
