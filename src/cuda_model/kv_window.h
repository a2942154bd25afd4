// The full-precision windows of the GPU cache (KvCacheOptions::sink_tokens, recent_tokens): the
// first `sink` tokens and the most recent `recent` tokens of every sequence, kept as fp16 rows
// beside the pages, as the CPU cache keeps them unquantized.
//
// Every token but the sink's is also encoded into the pages, at code position (position - sink);
// attention reads codes for positions [sink, length - recent) and these rows for the rest. A token
// leaving the recent window needs no work: its codes are already there, and a token's codes do
// not depend on when it is encoded, so this reads what the CPU cache reads.
//
// A CUDA header (its layout is used in kernels). Rows of sequence slot s and layer l: [s][l][sink +
// recent][kv_dim] halves, K and V apart; position p < sink at row p, a later one at row sink + (p -
// sink) % recent.
#pragma once

#include <cuda_fp16.h>

#include <cstddef>
#include <cstdint>

struct CUstream_st;

namespace polarquant::cuda {

struct WindowLayout {
  int sink = 0;
  int recent = 0;
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;

  __host__ __device__ int rows() const { return sink + recent; }
  __host__ __device__ bool empty() const { return rows() == 0; }
  __host__ __device__ int kv_dim() const { return n_kv_heads * head_dim; }
  // Halves of one of K or V for one sequence slot (all layers).
  size_t slot_halves() const {
    return static_cast<size_t>(n_layers) * rows() * static_cast<size_t>(kv_dim());
  }
  // Tokens of a sequence of `length` read from the pages: positions [sink, sink + this).
  size_t code_tokens(size_t length) const {
    const size_t keep = static_cast<size_t>(sink) + recent;
    return length > keep ? length - keep : 0;
  }
};

// Writes rows r < n of k and v (n x kv_dim floats, keys already centered) of one layer: row r is
// position positions[r] of the sequence in slot slots[r], kept if it is a sink position, or a
// later one at or after keep_from (the rows that stay in the recent window after this step).
void window_store(const WindowLayout& w, __half* win_k, __half* win_v, int layer, const float* k,
                  const float* v, int n, const int32_t* positions, const int32_t* slots,
                  long keep_from, CUstream_st* stream);

// Writes the window rows of one sequence of `length` tokens over the same positions of head-major
// halves [n_kv_heads][stride][head_dim] (the dense attention path's keys and values).
void window_overlay(const WindowLayout& w, const __half* win_k, const __half* win_v, int layer,
                    int slot, size_t length, size_t stride, __half* k_out, __half* v_out,
                    CUstream_st* stream);

// Decode: query row b (n_q_heads x head_dim floats of q) attends over its sequence's window rows
// (sequence slots[b] of lengths[b] tokens) and the result is merged into out, which holds the
// attention over the codes with lse_codes its ln sum exp of scores (DecodeBatch::lse).
void window_decode_merge(const WindowLayout& w, const __half* win_k, const __half* win_v, int layer,
                         const float* q, int batch, int n_q_heads, const int32_t* slots,
                         const int32_t* lengths, float scale, const float* lse_codes, float* out,
                         CUstream_st* stream);

}  // namespace polarquant::cuda
