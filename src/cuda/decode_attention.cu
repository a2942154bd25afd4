// Split-KV decode attention over paged PolarQuant K and V.
//
// Kernel 1 (attention_steps.cu) rotates and scales each query once: q' = S q * scale * log2(e).
// Kernel 2 (here): block (split, kv head, sequence) with 4 warps; each warp takes whole pages of
// the split and keeps its own online-softmax state for the g query heads of the KV head. Per
// page: 16-byte coalesced copy of the K and V head regions into shared memory, scores and P.V on
// tensor cores, the softmax in registers; scores never leave registers. Two kernels:
//  - attention_kernel_frag<D, head tiles, Fmt> (the `paper` and `polar37` layouts, Fmt = PaperFmt
//    in paper_decode.cuh, Polar37Fmt in polar37_frag.cuh): the decoders write the MMA operands in
//    registers, with S^T = K Q'^T and O^T = V^T P^T;
//  - attention_kernel (every other layout): per 32-slot tile, K is decoded into an fp16 tile in
//    shared memory, Q'K^T reads it with ldmatrix, then V is decoded into the same tile for P.V.
// Kernel 3 (attention_steps.cu) merges the blocks' partial (m, l, acc) states and applies S^T
// once per output.
#include <polarquant/cuda.h>
#include <polarquant/error.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "cuda/attention_steps.h"
#include "cuda/device_common.cuh"
#include "cuda/dispatch.h"
#include "cuda/mma.cuh"
#include "cuda/paper_decode.cuh"
#include "cuda/polar37_frag.cuh"

namespace polarquant::cuda {
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
  DeviceCodec c;
  const uint8_t* k_pool;
  const uint8_t* v_pool;
  const int32_t* tables;
  int max_pages;
  const int32_t* lengths;
  int n_q_heads;
  int g;  // query heads per KV head
  int splits;
  int pages_per_split;
  const __half* q_rot;  // batch x n_q_heads x dim
  float2* part_ml;      // parts x g: (m, l)
  float* part_acc;      // parts x g x dim
};

__host__ __device__ inline size_t align_up(size_t x, size_t a) {
  return (x + a - 1) / a * a;
}

struct SmemPlan {
  size_t tables = 0, q = 0, warp = 0, total = 0;
};

// Tile kernel. Per block: the generic cos/sin tables and the query tile; per warp: two buffers of
// (K region, V region) for the copy of the next page in flight, and the fp16 tile.
__host__ __device__ inline SmemPlan smem_plan(const DeviceCodec& c, int dim) {
  SmemPlan s;
  s.tables = align_up(2 * c.table_entries * sizeof(float), 16);
  s.q = static_cast<size_t>(kRows) * (dim + 8) * sizeof(__half);
  s.warp = 2 * kStages * static_cast<size_t>(c.head_bytes) + kTile * (dim + 8) * sizeof(__half);
  s.total = s.tables + s.q + kWarps * s.warp;
  return s;
}

// The tile kernel's decoders, chosen once per launch: levels 1..4 of widths 4/3/3/3 at compile
// time (`polar39` and other `polar37` relatives), or every width at run time; one token per lane
// and 16-coordinate unit, into an fp16 tile of 32 rows of D (+8 padding) halves. (`paper` and
// `polar37` have the register-fragment kernel.)
enum Decoder {
  kGenericDecoder = 0,
  kWide3Decoder = 2,
};

template <int D, int kDecoder>
__device__ __forceinline__ void decode_tile(const DeviceCodec& c, const uint8_t* region,
                                            const float* cos_s, const float* sin_s, int slot,
                                            __half* tile, int lane) {
  uint4* row = reinterpret_cast<uint4*>(tile + lane * (D + 8));
#pragma unroll 1
  for (int u = 0; u < D / 16; ++u) {
    float v[16];
    if constexpr (kDecoder == kWide3Decoder) {
      decode_unit<4, 3, 3, 3>(c, region, cos_s, sin_s, slot, u, v);
    } else {
      decode_unit<0, 0, 0, 0>(c, region, cos_s, sin_s, slot, u, v);
    }
    row[2 * u] = make_uint4(pack_half2(v[0], v[1]), pack_half2(v[2], v[3]), pack_half2(v[4], v[5]),
                            pack_half2(v[6], v[7]));
    row[2 * u + 1] = make_uint4(pack_half2(v[8], v[9]), pack_half2(v[10], v[11]),
                                pack_half2(v[12], v[13]), pack_half2(v[14], v[15]));
  }
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

// 2^x for the online softmax, whose arguments are <= 0: the bare MUFU.EX2, flushing results
// below 2^-126 to zero (exp2f adds a range fix-up of three instructions around it).
__device__ __forceinline__ float softmax_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Starts the 16-byte copies of page `pg`'s K and V head regions into one buffer pair: the tile
// kernel's copy, for any layout (head_bytes at run time), chunks in place.
__device__ __forceinline__ void fetch_page(const AttnParams& p, int b, int h, int pg, uint8_t* raw,
                                           int lane) {
  const DeviceCodec& c = p.c;
  const size_t page_id = static_cast<size_t>(p.tables[static_cast<size_t>(b) * p.max_pages + pg]);
  const size_t off = page_id * c.page_bytes + static_cast<size_t>(h) * c.head_bytes;
  const int chunks = c.head_bytes / 16;
  for (int i = lane; i < chunks; i += 32) {
    cp_async16(raw + 16 * i, p.k_pool + off + 16 * i);
    cp_async16(raw + c.head_bytes + 16 * i, p.v_pool + off + 16 * i);
  }
}

// The fragment kernel's copy: with the layout known at compile time, each lane's chunks
// (lane + 32 j) and their places in the shared-memory image (Fmt::chunk) are fixed, so they are
// worked out once per kernel; a page then costs its page-table load, two 64-bit adds and the
// copies. Buffers hold the K image, then the V image.
template <class Fmt>
struct FragCopy {
  static constexpr int kBytes = Fmt::kUsedBytes;  // copied from a head region
  static constexpr int kImage = Fmt::kImage;      // in shared memory
  static constexpr int kChunks = kBytes / 16, kPerLane = (kChunks + 31) / 32;
  uint32_t to[kPerLane];  // byte offset in an image of chunk lane + 32 j
  size_t lane_off;        // h * head_bytes + 16 lane: the lane's first chunk in a page
  bool last;              // whether chunk lane + 32 (kPerLane - 1) exists

  __device__ FragCopy(const DeviceCodec& c, int h, int lane)
      : lane_off(static_cast<size_t>(h) * c.head_bytes + 16 * lane),
        last(lane + 32 * (kPerLane - 1) < kChunks) {
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int i = lane + 32 * j;
      to[j] = Fmt::chunk(i < kChunks ? i : 0);
    }
  }

  __device__ __forceinline__ void operator()(const AttnParams& p, int b, int pg,
                                             uint8_t* raw) const {
    const size_t page_id = static_cast<size_t>(p.tables[static_cast<size_t>(b) * p.max_pages + pg]);
    const size_t off = page_id * p.c.page_bytes + lane_off;
    const uint8_t* k = p.k_pool + off;
    const uint8_t* v = p.v_pool + off;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      if (j < kPerLane - 1 || last) {
        cp_async16(raw + to[j], k + 512 * j);
        cp_async16(raw + kImage + to[j], v + 512 * j);
      }
    }
  }
};

// This block's pages [begin, end) of sequence b, with the copy of the warp's first page started
// (it overlaps the table and query set-up).
struct PageRange {
  int len, begin, end;
};
template <class Fetch>
__device__ __forceinline__ PageRange start_pages(const AttnParams& p, int b, int warp,
                                                 uint8_t* wbase, Fetch&& fetch) {
  const int len = p.lengths[b];
  const int n_pages = (len + p.c.page_tokens - 1) / p.c.page_tokens;
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
  const size_t part = (static_cast<size_t>(b) * p.c.n_kv_heads + h) * p.splits + split;
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

template <int D, int kDecoder>
__global__ void __launch_bounds__(kThreads, kMinBlocks) attention_kernel(AttnParams p) {
  extern __shared__ __align__(16) uint8_t smem[];
  const DeviceCodec& c = p.c;
  const SmemPlan plan = smem_plan(c, D);
  const int h = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int gq = lane / 4, tq = lane % 4;
  constexpr int kStride = D + 8;

  float* cos_s = reinterpret_cast<float*>(smem);
  float* sin_s = cos_s + c.table_entries;
  __half* qs = reinterpret_cast<__half*>(smem + plan.tables);
  uint8_t* wbase = smem + plan.tables + plan.q + warp * plan.warp;
  // Buffers are addressed as offsets from the shared array (not through a pointer array), so the
  // compiler keeps shared-memory loads (LDS) instead of generic ones.
  const uint32_t second = 2 * (kStages - 1) * c.head_bytes;
  __half* tile = reinterpret_cast<__half*>(wbase + 2 * kStages * c.head_bytes);

  const auto fetch = [&](int pg, uint8_t* raw) { fetch_page(p, b, h, pg, raw, lane); };
  const PageRange pages = start_pages(p, b, warp, wbase, fetch);

  for (int i = threadIdx.x; i < c.table_entries; i += kThreads) {
    cos_s[i] = c.cos_table[i];
    sin_s[i] = c.sin_table[i];
  }
  const __half* qb = p.q_rot + (static_cast<size_t>(b) * p.n_q_heads + h * p.g) * D;
  for (int i = threadIdx.x; i < kRows * D; i += kThreads) {
    const int r = i / D, col = i % D;
    qs[r * kStride + col] = r < p.g ? qb[r * D + col] : __float2half_rn(0.0f);
  }
  __syncthreads();

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;

  int cur = 0;
  for (int pg = pages.begin + warp; pg < pages.end; pg += kWarps, cur ^= 1) {
    const uint8_t* raw_k = wait_page(pg, pages.end, wbase, cur, second, fetch);
    const uint8_t* raw_v = raw_k + c.head_bytes;
    const int valid = min(c.page_tokens, pages.len - pg * c.page_tokens);
    for (int tile0 = 0; tile0 < valid; tile0 += kTile) {
      const int valid_t = min(kTile, valid - tile0);
      decode_tile<D, kDecoder>(c, raw_k, cos_s, sin_s, tile0 + lane, tile, lane);
      __syncwarp();
      // Scores: S (16 rows x 32 tokens) = Q' K^T, four n-tiles of 8 tokens.
      float s[4][4];
#pragma unroll
      for (int j = 0; j < 4; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
      const int mi = lane / 8, ri = lane % 8;
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
        uint32_t a[4];
        ldmatrix_x4(a, qs + ((mi & 1) * 8 + ri) * kStride + ks * 16 + (mi >> 1) * 8);
#pragma unroll
        for (int j = 0; j < 4; j += 2) {
          uint32_t kb[4];
          ldmatrix_x4(kb, tile + (8 * (j + (mi >> 1)) + ri) * kStride + ks * 16 + (mi & 1) * 8);
          mma_16816(s[j], a, kb[0], kb[1]);
          mma_16816(s[j + 1], a, kb[2], kb[3]);
        }
      }

      // Online softmax (log2 domain) on rows gq and gq + 8; a quad shares a row.
      float alpha[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int token = 8 * j + 2 * tq + e;
            float& v = s[j][2 * r + e];
            if (token >= valid_t) v = -INFINITY;
            mx = fmaxf(mx, v);
          }
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[r], mx);
        alpha[r] = exp2f(m[r] - m_new);
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& v = s[j][2 * r + e];
            v = exp2f(v - m_new);
            sum += v;
          }
        }
        l[r] = l[r] * alpha[r] + sum;
        m[r] = m_new;
      }
      // Once the running maxima settle, alpha is 1 for every row: skip the rescale then.
      if (!__all_sync(0xffffffffu, alpha[0] == 1.0f && alpha[1] == 1.0f)) {
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
          o[n][0] *= alpha[0];
          o[n][1] *= alpha[0];
          o[n][2] *= alpha[1];
          o[n][3] *= alpha[1];
        }
      }

      __syncwarp();  // every lane has read the K tile
      decode_tile<D, kDecoder>(c, raw_v, cos_s, sin_s, tile0 + lane, tile, lane);
      __syncwarp();

      // O (16 x D) += P (16 x 32) V (32 x D): two k-steps of 16 tokens.
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
        const uint32_t a[4] = {pack_half2(s[2 * kk][0], s[2 * kk][1]),
                               pack_half2(s[2 * kk][2], s[2 * kk][3]),
                               pack_half2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                               pack_half2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int n = 0; n < D / 8; n += 2) {
          uint32_t vb[4];
          ldmatrix_x4_trans(vb,
                            tile + (16 * kk + 8 * (mi & 1) + ri) * kStride + 8 * (n + (mi >> 1)));
          mma_16816(o[n], a, vb[0], vb[1]);
          mma_16816(o[n + 1], a, vb[2], vb[3]);
        }
      }
      __syncwarp();  // the tile is rewritten by the next K decode
    }
  }

  // Merge the four warps' states in shared memory (each warp stages (m, l) and its rows of O in
  // its own tile area), then write one partial state per block, rows < g only.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
  __syncwarp();
  float* stage = reinterpret_cast<float*>(tile);  // g x (m, l), then g x D
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = gq + 8 * r;
    if (row >= p.g) continue;
    if (tq == 0) {
      stage[2 * row] = m[r];
      stage[2 * row + 1] = l[r];
    }
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<float2*>(stage + 2 * kRows + row * D + 8 * n + 2 * tq) =
          make_float2(o[n][2 * r], o[n][2 * r + 1]);
    }
  }
  __syncthreads();
  write_block_state<D>(p, kRows, [&](int w) {
    return reinterpret_cast<const float*>(smem + plan.tables + plan.q + w * plan.warp +
                                          2 * kStages * c.head_bytes);
  });
}

// The register-fragment kernel (the `paper` and `polar37` layouts, up to 16 query heads per KV
// head): the format's decoders (Fmt::decode_k, Fmt::decode_v) write MMA fragments in registers,
// so no fp16 tile goes through shared memory. Per warp and page,
// for each 16-slot group: S^T (16 slots x 8 heads per head tile) = K Q'^T, K lane (g, t) decoding
// blocks t + 4 beta of the group's slots sigma(g) and sigma(g + 8); then the online softmax on
// S^T's columns (a lane holds heads 2t and 2t + 1 of each head tile throughout); then per group
// O^T (D x 8 heads) += V^T P^T, P^T transposed from S^T by movmatrix, V lane (g, t) decoding its
// pairs of the slots t + 4k (v_block, v_first_pair). docs/design/cuda.md draws the mapping.
constexpr int kFragHeads = 8;  // the MMAs' n: query heads per 8-column head tile
// 8-column head tiles for g query heads per KV head (1 or 2; CudaPolarCodec keeps the resident
// blocks of each).
constexpr int tiles_for(int g) {
  return g <= kFragHeads ? 1 : 2;
}
// Blocks per SM the registers are sized for (measured on the H200: 128 registers and 4 blocks at
// D <= 128 with one head tile; 3 blocks at D = 256 were 1.5% faster than 2; with two head tiles 2
// blocks at D = 128 were 13% faster than 3 at 128k, and 3 spill heavily at D = 256).
constexpr int frag_min_blocks(int d, int head_tiles) {
  return head_tiles == 2 ? 2 : d <= 128 ? 4 : 3;
}

// Shared memory per warp: the page buffers (K and V images, Fmt::kImage), which also stage the
// warp's state at the end.
template <int D, class Fmt>
__host__ __device__ constexpr size_t frag_warp_bytes(int head_tiles) {
  const size_t stage = (2 + static_cast<size_t>(D)) * kFragHeads * head_tiles * sizeof(float);
  const size_t pages = 2 * kStages * static_cast<size_t>(Fmt::kImage);
  return pages > stage ? pages : stage;
}

// kHeadTiles: 8-column tiles of query heads (1 for g <= 8, 2 for g <= 16).
template <int D, int kHeadTiles, class Fmt>
__global__ void __launch_bounds__(kThreads, frag_min_blocks(D, kHeadTiles))
    attention_kernel_frag(AttnParams p) {
  constexpr int kSlices = D / 16, kKBlocks = D / 64, kPairs = kVPairs<D>, NT = kHeadTiles;
  constexpr int kPageTokens = Fmt::kTokens;
  extern __shared__ __align__(16) uint8_t smem[];
  const DeviceCodec& c = p.c;
  const int h = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int gid = lane / 4, tq = lane % 4;
  const int m4 = gid >> 1, e = gid & 1;  // K rows gid, gid + 8: slots m4 + 8e, m4 + 8e + 4

  __shared__ __align__(512) typename Fmt::Tables tables_s;  // 512-aligned: see pair_entry
  typename Fmt::Tables* tables = &tables_s;
  const uint32_t tab = smem_address(tables);
  constexpr uint32_t warp_bytes = static_cast<uint32_t>(frag_warp_bytes<D, Fmt>(NT));
  constexpr int kImage = Fmt::kImage;
  uint8_t* wbase = smem + warp * warp_bytes;
  constexpr uint32_t second = 2 * (kStages - 1) * kImage;

  const FragCopy<Fmt> copy(c, h, lane);
  const auto fetch = [&](int pg, uint8_t* raw) { copy(p, b, pg, raw); };
  const PageRange pages = start_pages(p, b, warp, wbase, fetch);
  Fmt::load_tables(c, tables, threadIdx.x, kThreads);

  // B fragments of S^T = K Q'^T: head 8 nt + gid, coordinates 16u + 4q .. 16u + 4q + 3 of slice
  // 4 beta + q, u = tq + 4 beta (the coordinates the K lanes of this tq decode).
  uint32_t qf[NT][kSlices][2];
  const __half* qb = p.q_rot + (static_cast<size_t>(b) * p.n_q_heads + h * p.g) * D;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int head = 8 * nt + gid;
#pragma unroll
    for (int beta = 0; beta < kKBlocks; ++beta) {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        uint2 v = make_uint2(0u, 0u);
        if (head < p.g) {
          v = *reinterpret_cast<const uint2*>(qb + head * D + 16 * (tq + 4 * beta) + 4 * q);
        }
        qf[nt][4 * beta + q][0] = v.x;
        qf[nt][4 * beta + q][1] = v.y;
      }
    }
  }
  __syncthreads();

  // Online-softmax state of heads 8 nt + 2 tq + hc, and O^T tiles per head tile.
  float m[NT][2], l[NT][2], o[NT][kSlices][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    m[nt][0] = m[nt][1] = -INFINITY;
    l[nt][0] = l[nt][1] = 0.0f;
#pragma unroll
    for (int n = 0; n < kSlices; ++n) o[nt][n][0] = o[nt][n][1] = o[nt][n][2] = o[nt][n][3] = 0.0f;
  }

  int cur = 0;
  for (int pg = pages.begin + warp; pg < pages.end; pg += kWarps, cur ^= 1) {
    const uint8_t* raw_k = wait_page(pg, pages.end, wbase, cur, second, fetch);
    const uint8_t* raw_v = raw_k + kImage;
    const int valid = min(kPageTokens, pages.len - pg * kPageTokens);

    float s[NT][2][4] = {};  // [head tile][group]: S^T rows gid, gid + 8 x heads 2tq, 2tq + 1
#pragma unroll
    for (int grp = 0; grp < 2; ++grp) {
#pragma unroll
      for (int beta = 0; beta < kKBlocks; ++beta) {
        Fmt::decode_k(raw_k, tab, tq + 4 * beta, grp, m4, e, [&](int q, const uint32_t a[4]) {
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            mma_16816(s[nt][grp], a, qf[nt][4 * beta + q][0], qf[nt][4 * beta + q][1]);
          }
        });
      }
    }

    // Online softmax (log2 domain) per head column; the lanes of one tq share the columns.
    float alpha[NT][2];
    bool settled = true;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      if (valid < kPageTokens) {  // only a sequence's last page is partial
#pragma unroll
        for (int grp = 0; grp < 2; ++grp) {
          const int slot = 16 * grp + m4 + 8 * e;
          if (slot >= valid) s[nt][grp][0] = s[nt][grp][1] = -INFINITY;
          if (slot + 4 >= valid) s[nt][grp][2] = s[nt][grp][3] = -INFINITY;
        }
      }
#pragma unroll
      for (int hc = 0; hc < 2; ++hc) {
        float mx =
            fmaxf(fmaxf(s[nt][0][hc], s[nt][0][2 + hc]), fmaxf(s[nt][1][hc], s[nt][1][2 + hc]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
        const float m_new = fmaxf(m[nt][hc], mx);
        alpha[nt][hc] = softmax_exp2(m[nt][hc] - m_new);
        settled = settled && alpha[nt][hc] == 1.0f;
        float sum = 0.0f;
#pragma unroll
        for (int grp = 0; grp < 2; ++grp) {
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            float& v = s[nt][grp][2 * r + hc];
            v = softmax_exp2(v - m_new);
            sum += v;
          }
        }
        l[nt][hc] = l[nt][hc] * alpha[nt][hc] + sum;
        m[nt][hc] = m_new;
      }
    }
    if (!__all_sync(0xffffffffu, settled)) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int n = 0; n < kSlices; ++n) {
          o[nt][n][0] *= alpha[nt][0];
          o[nt][n][1] *= alpha[nt][1];
          o[nt][n][2] *= alpha[nt][0];
          o[nt][n][3] *= alpha[nt][1];
        }
      }
    }

    uint32_t pt[NT][2][2];  // B fragments of P^T: rows (slots) 2t..2t+1, 2t+8..2t+9
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int grp = 0; grp < 2; ++grp) {
        pt[nt][grp][0] = movmatrix_trans(pack_half2(s[nt][grp][0], s[nt][grp][1]));
        pt[nt][grp][1] = movmatrix_trans(pack_half2(s[nt][grp][2], s[nt][grp][3]));
      }
    }
#pragma unroll
    for (int grp = 0; grp < 2; ++grp) {
#pragma unroll
      for (int unit = 0; unit < kVUnits<D>; ++unit) {
        Fmt::template decode_v<kPairs>(raw_v, tab, v_block<D>(gid, unit), v_first_pair<D>(gid), grp,
                                       tq, [&](int pr, const uint32_t a[4]) {
#pragma unroll
                                         for (int nt = 0; nt < NT; ++nt) {
                                           mma_16816(o[nt][kPairs * unit + pr], a, pt[nt][grp][0],
                                                     pt[nt][grp][1]);
                                         }
                                       });
      }
    }
    __syncwarp();  // the buffer is refilled by the next iteration's copy
  }

#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int hc = 0; hc < 2; ++hc) {
      l[nt][hc] += __shfl_xor_sync(0xffffffffu, l[nt][hc], 4);
      l[nt][hc] += __shfl_xor_sync(0xffffffffu, l[nt][hc], 8);
      l[nt][hc] += __shfl_xor_sync(0xffffffffu, l[nt][hc], 16);
    }
  }
  cp_async_wait_all();
  __syncwarp();
  constexpr int kStageRows = kFragHeads * NT;
  float* stage = reinterpret_cast<float*>(wbase);  // kStageRows x (m, l), then kStageRows x D
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int hc = 0; hc < 2; ++hc) {
      const int head = 8 * nt + 2 * tq + hc;
      if (head >= p.g) continue;
      if (gid == 0) {
        stage[2 * head] = m[nt][hc];
        stage[2 * head + 1] = l[nt][hc];
      }
#pragma unroll
      for (int unit = 0; unit < kVUnits<D>; ++unit) {
#pragma unroll
        for (int pr = 0; pr < kPairs; ++pr) {
          const int coord = 16 * v_block<D>(gid, unit) + 2 * (v_first_pair<D>(gid) + pr);
          float* row = stage + 2 * kStageRows + head * D + coord;
          row[0] = o[nt][kPairs * unit + pr][hc];
          row[1] = o[nt][kPairs * unit + pr][2 + hc];
        }
      }
    }
  }
  __syncthreads();
  write_block_state<D>(
      p, kStageRows, [&](int w) { return reinterpret_cast<const float*>(smem + w * warp_bytes); });
}

using AttentionKernel = void (*)(AttnParams);
struct Launch {
  AttentionKernel kernel = nullptr;
  size_t smem = 0;
  const char* name = "";  // decode_kernel_name
};

template <int D, class Fmt>
Launch frag_choice(int head_tiles) {
  Launch l;
  l.kernel = head_tiles == 1 ? attention_kernel_frag<D, 1, Fmt> : attention_kernel_frag<D, 2, Fmt>;
  l.smem = kWarps * frag_warp_bytes<D, Fmt>(head_tiles);
  l.name = Fmt::kName;
  return l;
}

// The kernel for the codec's shape and g query heads per KV head: the register-fragment kernel
// for the `paper` and `polar37` layouts, else the tile kernel with the fastest decoder for the
// layout.
template <int D>
Launch attention_choice(const DeviceCodec& c, int g) {
  Launch l;
  const int tiles = tiles_for(g);
  if (PaperFmt<D>::matches(c)) {
    l = frag_choice<D, PaperFmt<D>>(tiles);
  } else if (Polar37Fmt<D>::matches(c)) {
    l = frag_choice<D, Polar37Fmt<D>>(tiles);
  } else {
    const bool wide3 = c.bits[0] == 4 && c.bits[1] == 3 && c.bits[2] == 3 && c.bits[3] == 3;
    l.kernel = wide3 ? attention_kernel<D, kWide3Decoder> : attention_kernel<D, kGenericDecoder>;
    l.name = wide3 ? "tile-wide3" : "tile-generic";
    l.smem = smem_plan(c, D).total;
  }
  return l;
}

Launch attention_choice_for(const DeviceCodec& c, int g) {
  Launch l;
  with_dim(c.dim, [&](auto d) { l = attention_choice<decltype(d)::value>(c, g); });
  return l;
}

}  // namespace

void configure_attention(const DeviceCodec& c, int resident[2]) {
  for (int tiles = 1; tiles <= 2; ++tiles) {
    const Launch l = attention_choice_for(c, tiles * kFragHeads);
    check_cuda(cudaFuncSetAttribute(l.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(l.smem)),
               "cudaFuncSetAttribute(attention)");
    check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident[tiles - 1], l.kernel,
                                                             kThreads, l.smem),
               "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  }
}

namespace {

struct Geometry {
  Launch launch;  // chosen once per call (CudaPolarCodec set its shared memory allowance)
  int splits = 1, pages_per_split = 1;
  size_t q_bytes = 0, ml_bytes = 0, acc_bytes = 0;
};

// Splits of the context: enough blocks to fill every SM even at batch 1, at least two pages per
// warp, and a block count close to a whole number of waves (a last, nearly empty wave of blocks
// would leave most SMs idle while it runs).
Geometry geometry(const CudaPolarCodec& codec, const DecodeBatch& batch) {
  const DeviceCodec& c = codec.device();
  Geometry geo;
  const int pages_max = std::max(1, (batch.max_length + c.page_tokens - 1) / c.page_tokens);
  const long heads = static_cast<long>(batch.batch) * c.n_kv_heads;
  const int g = batch.n_q_heads / c.n_kv_heads;
  geo.launch = attention_choice_for(c, g);
  const int resident = codec.attention_resident(tiles_for(g));
  const long slots =
      static_cast<long>(std::max(1, resident)) * std::max(1, codec.multiprocessors());
  const int floor_pages = std::min(2 * kWarps, pages_max);
  double best = -1.0;
  for (int waves = 1; waves <= 16; ++waves) {
    const long want = std::max(1L, (slots * waves + heads - 1) / heads);
    const int pps = std::max(static_cast<int>((pages_max + want - 1) / want), floor_pages);
    const int splits = (pages_max + pps - 1) / pps;
    const long blocks = heads * splits;
    const double efficiency =
        static_cast<double>(blocks) / (static_cast<double>((blocks + slots - 1) / slots) * slots);
    if (efficiency > best + 0.01) {
      best = efficiency;
      geo.pages_per_split = pps;
      geo.splits = splits;
    }
    if (pps == floor_pages) break;
  }
  // The workspace holds the most splits any shorter context could take (at most pages_max and at
  // most the 16-wave count), so one allocation sized at the longest context serves every step.
  const long bound = std::min<long>(pages_max, std::max(1L, (slots * 16 + heads - 1) / heads));
  const size_t parts = static_cast<size_t>(heads) * std::max<long>(bound, geo.splits);
  geo.q_bytes = align_up(static_cast<size_t>(batch.batch) * batch.n_q_heads * c.dim * 2, 256);
  geo.ml_bytes = align_up(parts * g * sizeof(float2), 256);
  geo.acc_bytes = align_up(parts * g * c.dim * sizeof(float), 256);
  return geo;
}

// The query-head count: a positive multiple of the KV heads (kInvalidArgument), at most kRows per
// KV head (kUnsupported).
void check_heads(const CudaPolarCodec& codec, int n_q_heads, const char* caller) {
  const int n_kv = codec.n_kv_heads();
  if (n_q_heads < n_kv || n_q_heads % n_kv != 0) {
    throw_invalid(std::string(caller) + ": n_q_heads " + std::to_string(n_q_heads) +
                  " must be a positive multiple of n_kv_heads " + std::to_string(n_kv));
  }
  if (n_q_heads / n_kv > kRows) {
    throw Error(ErrorKind::kUnsupported, std::string(caller) + ": " +
                                             std::to_string(n_q_heads / n_kv) +
                                             " query heads per KV head; at most 16 are supported");
  }
}

void check_batch(const CudaPolarCodec& codec, const DecodeBatch& batch) {
  const int n_kv = codec.n_kv_heads();
  const auto fail = [&](const std::string& what) {
    throw_invalid("decode_attention: " + what + " (batch " + std::to_string(batch.batch) +
                  ", n_q_heads " + std::to_string(batch.n_q_heads) + ", n_kv_heads " +
                  std::to_string(n_kv) + ", max_length " + std::to_string(batch.max_length) +
                  ", max_pages " + std::to_string(batch.max_pages) + ")");
  };
  if (batch.batch < 1) fail("batch must be >= 1");
  check_heads(codec, batch.n_q_heads, "decode_attention");
  if (batch.max_length < 0) fail("max_length must be >= 0");
  if (static_cast<long>(batch.max_pages) * codec.page_tokens() < batch.max_length) {
    fail("max_pages * page_tokens must cover max_length");
  }
  if (!batch.k_pool || !batch.v_pool || !batch.page_tables || !batch.lengths) {
    fail("k_pool, v_pool, page_tables and lengths must be device pointers");
  }
}

}  // namespace

const char* decode_kernel_name(const CudaPolarCodec& codec, int n_q_heads) {
  check_heads(codec, n_q_heads, "decode_kernel_name");
  return attention_choice_for(codec.device(), n_q_heads / codec.n_kv_heads()).name;
}

size_t decode_workspace_bytes(const CudaPolarCodec& codec, const DecodeBatch& batch) {
  check_batch(codec, batch);
  const Geometry geo = geometry(codec, batch);
  return geo.q_bytes + geo.ml_bytes + geo.acc_bytes;
}

void decode_attention(const CudaPolarCodec& codec, const DecodeBatch& batch, const float* q,
                      float* out, void* workspace, size_t workspace_bytes, Stream stream) {
  check_batch(codec, batch);
  if (!q || !out) throw_invalid("decode_attention: q and out must be device pointers");
  const Geometry geo = geometry(codec, batch);
  const size_t need = geo.q_bytes + geo.ml_bytes + geo.acc_bytes;
  if (workspace == nullptr || workspace_bytes < need) {
    throw_invalid("decode_attention: workspace of " + std::to_string(workspace_bytes) +
                  " bytes; this shape needs " + std::to_string(need) + " (decode_workspace_bytes)");
  }
  const DeviceCodec& c = codec.device();
  const float scale =
      batch.scale > 0.0f ? batch.scale : 1.0f / std::sqrt(static_cast<float>(c.dim));
  uint8_t* ws = static_cast<uint8_t*>(workspace);
  AttnParams p{c,
               batch.k_pool,
               batch.v_pool,
               batch.page_tables,
               batch.max_pages,
               batch.lengths,
               batch.n_q_heads,
               batch.n_q_heads / c.n_kv_heads,
               geo.splits,
               geo.pages_per_split,
               reinterpret_cast<const __half*>(ws),
               reinterpret_cast<float2*>(ws + geo.q_bytes),
               reinterpret_cast<float*>(ws + geo.q_bytes + geo.ml_bytes)};

  launch_rotate_query(c, q, batch.batch * batch.n_q_heads, scale * 1.4426950408889634f,
                      reinterpret_cast<__half*>(ws), stream);

  const dim3 grid(geo.splits, c.n_kv_heads, batch.batch);
  geo.launch.kernel<<<grid, kThreads, geo.launch.smem, stream>>>(p);
  check_cuda(cudaGetLastError(), "launch(attention)");

  launch_merge(c, batch.batch, batch.n_q_heads, p.g, geo.splits, p.part_ml, p.part_acc, out,
               batch.lse, stream);
}

}  // namespace polarquant::cuda
