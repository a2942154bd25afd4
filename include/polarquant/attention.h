// Attention over the KV cache (reading the stored codes directly where a fused path exists) and
// over full-precision K/V. GQA/MQA: n_q_heads must be a multiple of the cache's n_kv_heads; query
// head h uses KV head h / (n_q_heads / n_kv_heads). Scale defaults to 1/sqrt(head_dim).
#pragma once

#include <polarquant/kv_cache.h>

#include <cstddef>

namespace polarquant {

struct AttentionOptions {
  int n_threads = 0;      // 0: all hardware threads
  float scale = 0.0f;     // 0: 1/sqrt(head_dim)
  bool use_fused = true;  // false: decode-then-attend reference path (for tests and comparison)
  // Sliding-window attention (Gemma 3's local layers): query at position p sees keys
  // max(0, p - window + 1)..p. 0: no window. cache_attention only; dense_causal_attention refuses
  // a window.
  size_t window = 0;
};

// Causal attention of the last n_queries tokens of a sequence (already appended to the cache at
// this layer) over the cache: query i (position length-n_queries+i) attends to positions 0..its
// own. q and out: n_queries x n_q_heads x head_dim. n_queries == 1 is decode.
void cache_attention(const KvCache& cache, SequenceId seq, int layer, const float* q,
                     size_t n_queries, int n_q_heads, float* out,
                     const AttentionOptions& options = {});

// Causal attention over full-precision K/V (prefill before the tokens are stored). q and out:
// n_tokens x n_q_heads x head_dim; k and v: n_tokens x n_kv_heads x head_dim. Query i attends to
// keys 0..i.
void dense_causal_attention(const float* q, const float* k, const float* v, size_t n_tokens,
                            int n_q_heads, int n_kv_heads, int head_dim, float* out,
                            const AttentionOptions& options = {});

}  // namespace polarquant
