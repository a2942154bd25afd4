// The CUDA runtime's small kernels: everything in a Llama layer that is not a GEMM or attention
// over the cache. Each launcher only enqueues on `stream`; pointers are device memory. The plain
// CPU twins are in src/model/transformer.cpp (rms_norm, rope_rotate, SwiGLU), and
// tests/cuda/runtime_cuda_test.cpp holds the GPU path's logits to the CPU path's.
#pragma once

#include <cuda_fp16.h>

#include <cstddef>
#include <cstdint>

struct CUstream_st;

namespace polarquant::cuda {

using Stream = CUstream_st*;

// x[t] = table[tokens[t]] (n rows of dim floats).
void embed_rows(const float* table, const int32_t* tokens, int n, int dim, float* x, Stream s);
// out[t] = half(x[t] * rsqrt(mean(x[t]^2) + eps) * weight), one block per row.
void rms_norm_half(const float* x, const float* weight, int n, int dim, float eps, __half* out,
                   Stream s);
// Adjacent-pair RoPE on n rows of n_heads x head_dim floats; row t is at position positions[t]
// (angles in double, as the CPU's rope_rotate).
void rope_rows(float* x, int n, int n_heads, int head_dim, const int32_t* positions,
               const float* inv_freq, Stream s);
// out[i] = half(silu(gate[i]) * up[i]).
void silu_gate_half(const float* gate, const float* up, size_t count, __half* out, Stream s);
void to_half(const float* x, size_t count, __half* out, Stream s);
// mean[c] = average of x[t][c] over t < n (n rows of width floats).
void column_mean(const float* x, int n, int width, float* mean, Stream s);
// x[t][c] -= means[slots[t] * slot_stride + c] (slots null: slot 0 for every row).
void subtract_rows(float* x, int n, int width, const float* means, const int32_t* slots,
                   size_t slot_stride, Stream s);
// Token-major floats [n][heads][dim] to head-major halves [heads][stride][dim] (rows t < n).
void to_head_major_half(const float* x, int n, int heads, int dim, size_t stride, __half* out,
                        Stream s);
// Causal softmax of prefill scores: rows (head, t) of `scores` ([heads][n][ld] floats) see keys
// [0, first + t], scaled by `scale`; p gets the probabilities as halves (0 past the row's keys).
void causal_softmax(const float* scores, int heads, int n, int keys, size_t ld, size_t first,
                    float scale, __half* p, Stream s);
// Deterministic pseudo-random halves in [-amp, amp) (random-weight models for speed runs).
void fill_random_half(__half* x, size_t count, uint64_t seed, float amp, Stream s);
void fill_random_float(float* x, size_t count, uint64_t seed, float amp, float offset, Stream s);
// Row argmax of logits (rows x vocab): the greedy token of each row.
void argmax_rows(const float* logits, int rows, int vocab, int32_t* out, Stream s);
// Zeroes `count` pages (ids in page_ids, device) of `pools` pools of page_bytes-sized pages, the
// pools pool_stride bytes apart.
void zero_pages(uint8_t* first_pool, size_t pool_stride, int pools, const int32_t* page_ids,
                int count, size_t page_bytes, Stream s);

}  // namespace polarquant::cuda
