// The register-fragment kernel of decode attention (the `paper` and `polar37` layouts, through
// PaperFmt in paper_decode.cuh and Polar37Fmt in polar37_frag.cuh for the host layout, and
// PaperPairsFmt / Polar37PairsFmt for the pairs layout; see decode_attention.cu): its
// page copy with compile-time chunk places, its shared-memory and register sizing, and the kernel.
// Included only by decode_attention.cu, after decode_pipeline.cuh; internal linkage as there.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "cuda/decode_pipeline.cuh"
#include "cuda/device_codec.h"
#include "cuda/mma.cuh"
#include "cuda/paper_decode.cuh"

namespace polarquant::cuda {
// Internal linkage, as in the one translation unit that includes this file (decode_attention.cu).
namespace {

// 2^x for the online softmax, whose arguments are <= 0: the bare MUFU.EX2, flushing results
// below 2^-126 to zero (exp2f adds a range fix-up of three instructions around it).
__device__ __forceinline__ float softmax_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
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
    const size_t off = page_id * p.kc.page_bytes + lane_off;  // kc == vc here
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
  const DeviceCodec& c = p.kc;  // the fragment kernel runs only where keys and values share it
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

    if (p.page_bias != nullptr) {  // this page's score shift per head column (DecodeBatch)
      const float* pb =
          p.page_bias + (static_cast<size_t>(b) * p.max_pages + pg) * p.n_q_heads + h * p.g;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int hc = 0; hc < 2; ++hc) {
          const int head = 8 * nt + 2 * tq + hc;
          const float add = head < p.g ? pb[head] * p.bias_scale : 0.0f;
#pragma unroll
          for (int grp = 0; grp < 2; ++grp) {
            s[nt][grp][hc] += add;
            s[nt][grp][2 + hc] += add;
          }
        }
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

}  // namespace
}  // namespace polarquant::cuda
