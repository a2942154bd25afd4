// Internal entry points of the attention layer (the tests and the benchmark use them to pin a
// kernel set or to reach the double-precision reference).
#pragma once

#include <polarquant/attention.h>

#include "attention/kernels.h"

namespace polarquant {

// cache_attention's fused path with a given kernel set.
void cache_attention_with(const KernelSet& kernels, const KvCache& cache, SequenceId seq, int layer,
                          const float* q, size_t n_queries, int n_q_heads, float* out,
                          const AttentionOptions& options);

// Causal attention in double precision over explicit K/V rows: query i of n_queries sits at
// position n_keys - n_queries + i and sees keys 0..that position. q/out: n_queries x n_q_heads x
// dim; k/v: n_keys x n_kv_heads x dim. window > 0 limits each query to its last window keys.
void reference_attention(const float* q, size_t n_queries, const float* k, const float* v,
                         size_t n_keys, int n_q_heads, int n_kv_heads, int dim, float scale,
                         float* out, size_t window = 0);

// Shared argument checks; returns the scale to use.
float check_attention_args(const char* caller, const float* q, size_t n_queries, int n_q_heads,
                           int n_kv_heads, int dim, const AttentionOptions& options);
int resolve_threads(const AttentionOptions& options);

}  // namespace polarquant
