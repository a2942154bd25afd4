// The parts of the split-KV decode attention kernels (decode_attention.cu) that both kernels
// share: the block shape, the kernel parameters, the per-warp page pipeline (cp.async copies of
// the next page overlapping this page's work) and the merge of the warps' softmax states into the
// block's partial state. Included only by decode_attention.cu, after its own includes; everything
// here keeps the internal linkage it had there.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "cuda/device_codec.h"
#include "cuda/mma.cuh"

namespace polarquant::cuda {
// Internal linkage, as in the one translation unit that includes this file (decode_attention.cu).
namespace {

// Tuning knobs (overridable at compile time for experiments): page buffers per warp (2: the next
// page's copy overlaps this page's decoding) and the blocks per SM the registers are sized for.
#ifndef POLARQUANT_CUDA_PAGE_STAGES
#define POLARQUANT_CUDA_PAGE_STAGES 2
#endif
#ifndef POLARQUANT_CUDA_MIN_BLOCKS
#define POLARQUANT_CUDA_MIN_BLOCKS 3
#endif
constexpr int kStages = POLARQUANT_CUDA_PAGE_STAGES;
constexpr int kMinBlocks = POLARQUANT_CUDA_MIN_BLOCKS;
static_assert(kStages == 1 || kStages == 2, "one or two page buffers per warp");
constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kRows = 16;  // MMA rows: query heads of one KV head, zero-padded
constexpr int kTile = 32;  // tokens decoded at once (one per lane)

struct AttnParams {
  DeviceCodec kc;  // the key pages' layout and tables
  DeviceCodec vc;  // the value pages' (the same as kc unless keys and values differ: polar4kv)
  const uint8_t* k_pool;
  const uint8_t* v_pool;
  const int32_t* tables;
  int max_pages;
  const int32_t* lengths;
  int n_q_heads;
  int g;  // query heads per KV head
  int splits;
  int pages_per_split;
  const __half* q_rot;     // batch x n_q_heads x dim
  float2* part_ml;         // parts x g: (m, l)
  float* part_acc;         // parts x g x dim
  const float* page_bias;  // DecodeBatch::page_bias (null: none)
  float bias_scale;        // what page_bias is multiplied by in the scores' log2 domain
};

__host__ __device__ inline size_t align_up(size_t x, size_t a) {
  return (x + a - 1) / a * a;
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_address(dst)), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
__device__ __forceinline__ void cp_async_wait_one() {
  asm volatile("cp.async.wait_group 1;\n" ::: "memory");
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

// This block's pages [begin, end) of sequence b, with the copy of the warp's first page started
// (it overlaps the table and query set-up).
struct PageRange {
  int len, begin, end;
};
template <class Fetch>
__device__ __forceinline__ PageRange start_pages(const AttnParams& p, int b, int warp,
                                                 uint8_t* wbase, Fetch&& fetch) {
  const int len = p.lengths[b];
  const int n_pages = (len + p.kc.page_tokens - 1) / p.kc.page_tokens;
  const int begin = blockIdx.x * p.pages_per_split;
  const PageRange r{len, begin, min(n_pages, begin + p.pages_per_split)};
  if (kStages == 2 && begin + warp < r.end) fetch(begin + warp, wbase);
  cp_async_commit();
  return r;
}

// Page pg's K region in shared memory (its V region follows), once its copy has landed; the copy
// of the warp's next page into the other buffer is started first.
template <class Fetch>
__device__ __forceinline__ const uint8_t* wait_page(int pg, int end, uint8_t* wbase, int cur,
                                                    uint32_t second, Fetch&& fetch) {
  if constexpr (kStages == 2) {
    if (pg + kWarps < end) fetch(pg + kWarps, wbase + (cur ? 0 : second));
  } else {
    fetch(pg, wbase);
  }
  cp_async_commit();
  if constexpr (kStages == 2) {
    cp_async_wait_one();  // this page's copies (all but the newest group) have landed
  } else {
    cp_async_wait_all();
  }
  __syncwarp();
  return wbase + (cur ? second : 0);
}

// Merges the four warps' online-softmax states, staged in shared memory (warp w's at
// stage_of(w): `rows` x (m, l), then rows x D accumulators), and writes the block's partial
// state for query rows < g.
template <int D, class StageOf>
__device__ __forceinline__ void write_block_state(const AttnParams& p, int rows,
                                                  StageOf&& stage_of) {
  const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const size_t part = (static_cast<size_t>(b) * p.kc.n_kv_heads + h) * p.splits + split;
  for (int i = threadIdx.x; i < p.g * D; i += kThreads) {
    const int row = i / D, col = i % D;
    float m_max = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m_max = fmaxf(m_max, stage_of(w)[2 * row]);
    float acc = 0.0f, total = 0.0f;
    if (m_max != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float* st = stage_of(w);
        if (st[2 * row] == -INFINITY) continue;
        const float weight = exp2f(st[2 * row] - m_max);
        total += st[2 * row + 1] * weight;
        acc += st[2 * rows + row * D + col] * weight;
      }
    }
    p.part_acc[(part * p.g + row) * D + col] = acc;
    if (col == 0) p.part_ml[part * p.g + row] = make_float2(m_max, total);
  }
}

}  // namespace
}  // namespace polarquant::cuda
