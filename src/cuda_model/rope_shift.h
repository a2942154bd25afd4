// RoPE-aware key centering on the GPU (RuntimeOptions::rope_center_keys): the CPU cache's
// mechanism (src/cache/rope_center.h) for the CUDA runtime's pages. Besides the post-RoPE key mean
// that every stored key loses (CudaTransformer's `means`), a sequence keeps its first chunk's mean
// before RoPE, and the codes of page p hold
//   k - mean_post - delta(p),  delta(p) = R(middle of p) mean_pre - mean_post
// on the pairs turning less than RopeCenter::kMaxTurn radians per page (zero elsewhere). The
// full-precision window rows keep k - mean_post. Reading the codes back adds delta(p) to the keys
// (dense attention); the fused decode kernels add q . delta(p) to page p's scores instead
// (DecodeBatch::page_bias). Page p's middle position is sink + 32 p + 16, as on the CPU, and the
// pairs and angles come from the CPU's RopeCenter, so both caches shift the same coordinates.
//
// Means are per sequence slot and layer: [slot][layer][kv_dim] floats, slot_stride floats apart.
#pragma once

#include <cuda_fp16.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "cuda_model/device_buffer.h"

struct CUstream_st;

namespace polarquant::cuda {

class RopeShift {
 public:
  RopeShift() = default;
  // inv_freq: head_dim / 2 interleaved-pair frequencies (the runtime's rope_rows). Covers pages
  // [0, max_pages) of a sequence.
  RopeShift(const std::vector<float>& inv_freq, int head_dim, int n_kv_heads, int page_tokens,
            int sink_tokens, int max_pages);
  bool enabled() const { return pairs_ > 0; }

  // out[r] = k[r] - delta(page of code position code_positions[r]) of sequence slot slots[r], for
  // rows r < n of kv_dim floats (code positions at or past the sink's; rows inside the sink get
  // page 0's and are not encoded). mean_pre / mean_post: one layer's means of slot 0.
  void subtract(const float* k, int n, const int32_t* code_positions, const int32_t* slots,
                const float* mean_pre, const float* mean_post, size_t slot_stride, float* out,
                CUstream_st* stream) const;
  // Adds delta(page) to n head-major key rows [n_kv_heads][stride][head_dim] halves starting at
  // code position code_from (row t of head h at k + (h * stride + t) * head_dim), one sequence.
  void add(__half* k, size_t stride, size_t code_from, int n, const float* mean_pre,
           const float* mean_post, CUstream_st* stream) const;
  // bias[b][page][head] = q_b,head . delta_b(page) for the pages covering code_lengths[b] tokens
  // (pages past them are left alone): DecodeBatch::page_bias. q: batch x n_q_heads x head_dim
  // floats (after RoPE, not rotated by the codec); query head h reads KV head h / (n_q_heads /
  // n_kv_heads).
  void page_bias(const float* q, int batch, int n_q_heads, const int32_t* slots,
                 const int32_t* code_lengths, int max_code_length, const float* mean_pre,
                 const float* mean_post, size_t slot_stride, int max_pages, float* bias,
                 CUstream_st* stream) const;

 private:
  int head_dim_ = 0, n_kv_heads_ = 0, page_tokens_ = 0, max_pages_ = 0, pairs_ = 0;
  DeviceBuffer<int2> coords_;  // per shifted pair: its two coordinates within a head
  DeviceBuffer<float2> rot_;   // [page][pair]: cos and sin of the page's middle angle
};

}  // namespace polarquant::cuda
