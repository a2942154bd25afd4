// The fp16 KV cache on the GPU: pages of page_tokens tokens, each page holding n_kv_heads head
// regions of page_tokens x head_dim halves (head-major inside a page, so that one head's tokens are
// contiguous). The baseline that PolarQuant's pages are measured against: stores, a gather into
// contiguous head-major halves for prefill attention, and split-KV decode attention (one query
// token per sequence) over the pages.
#pragma once

#include <cuda_fp16.h>
#include <polarquant/cuda.h>

#include <cstddef>
#include <cstdint>

struct CUstream_st;

namespace polarquant::cuda {

struct F16Layout {
  int head_dim = 0;
  int n_kv_heads = 0;
  int page_tokens = 0;
  size_t page_bytes() const {
    return static_cast<size_t>(n_kv_heads) * page_tokens * head_dim * sizeof(__half);
  }
};

// Stores rows r < n of x (token-major, n x n_kv_heads x head_dim floats). With batch rows, row r
// belongs to the sequence of table row r at position positions[r]; otherwise every row belongs to
// table row 0, at position first + r.
void f16_store(const F16Layout& layout, uint8_t* pool, const int32_t* page_tables, int max_pages,
               const int32_t* positions, bool batch_rows, size_t first, int n, const float* x,
               CUstream_st* stream);

// Positions [first, first + n) of one sequence into the same rows of out: [n_kv_heads][stride]
// [head_dim] halves.
void f16_gather(const F16Layout& layout, const uint8_t* pool, const int32_t* page_table,
                size_t first, int n, size_t stride, __half* out, CUstream_st* stream);

// The batch is described as for the PolarQuant decode (polarquant/cuda.h), with fp16 pools.
using F16DecodeBatch = DecodeBatch;

// Workspace bytes for this shape; enough also for the same batch with any shorter max_length.
size_t f16_decode_workspace_bytes(const F16Layout& layout, const F16DecodeBatch& batch,
                                  int multiprocessors);
// q, out: batch x n_q_heads x head_dim floats. Supports head_dim 64, 128, 256 and up to 64 query
// heads per KV head; throws Unsupported otherwise.
void f16_decode_attention(const F16Layout& layout, const F16DecodeBatch& batch, const float* q,
                          float* out, void* workspace, size_t workspace_bytes, int multiprocessors,
                          CUstream_st* stream);

}  // namespace polarquant::cuda
