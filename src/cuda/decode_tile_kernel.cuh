// The tile kernel of decode attention (every layout without a register-fragment decoder, and
// keys and values of different layouts; see decode_attention.cu): per 32-slot tile, K is decoded
// into an fp16 tile in shared memory, Q'K^T reads it with ldmatrix, then V is decoded into the same
// tile for P.V. Included only by decode_attention.cu, after decode_pipeline.cuh; internal linkage
// as there.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "cuda/decode_pipeline.cuh"
#include "cuda/device_codec.h"
#include "cuda/device_common.cuh"
#include "cuda/mma.cuh"

namespace polarquant::cuda {
// Internal linkage, as in the one translation unit that includes this file (decode_attention.cu).
namespace {

struct SmemPlan {
  size_t k_tables = 0, v_tables = 0, q = 0, pages = 0, warp = 0, total = 0;
};

// Tile kernel. Per block: the key codec's cos/sin tables, the value codec's, and the query tile;
// per warp: kStages buffers of (K region, V region) for the copy of the next page in flight, and
// the fp16 tile.
__host__ __device__ inline SmemPlan smem_plan(const DeviceCodec& kc, const DeviceCodec& vc,
                                              int dim) {
  SmemPlan s;
  s.k_tables = align_up(2 * kc.table_entries * sizeof(float), 16);
  s.v_tables = align_up(2 * vc.table_entries * sizeof(float), 16);
  s.q = static_cast<size_t>(kRows) * (dim + 8) * sizeof(__half);
  s.pages = kStages * (static_cast<size_t>(kc.head_bytes) + vc.head_bytes);
  s.warp = s.pages + kTile * (dim + 8) * sizeof(__half);
  s.total = s.k_tables + s.v_tables + s.q + kWarps * s.warp;
  return s;
}

// The tile kernel's decoders, one for the keys and one for the values, chosen once per launch:
// levels 1..4 of widths known at compile time (4/3/3/3: `polar39` and other `polar37` relatives;
// 5/4/4/4: polar4kv's keys, `polar-544444`; 4/2/2/2: its values, `polar-422222`), or every width
// at run time; one token per lane and 16-coordinate unit, into an fp16 tile of 32 rows of D (+8
// padding) halves. (`paper` and `polar37` have the register-fragment kernel.)
enum Decoder {
  kGenericDecoder = 0,
  kWide3Decoder = 2,
  kWide5Decoder = 3,
  kNarrow2Decoder = 4,
};

// The widths of levels 1..4 a decoder is compiled for (0: read at run time).
__host__ __device__ constexpr int decoder_bits(int decoder, int level) {
  constexpr int kBits[5][4] = {
      {0, 0, 0, 0}, {0, 0, 0, 0}, {4, 3, 3, 3}, {5, 4, 4, 4}, {4, 2, 2, 2}};
  return kBits[decoder][level - 1];
}

// The fastest decoder for a layout: the one whose compile-time widths are its own, else generic.
inline Decoder decoder_for(const DeviceCodec& c) {
  for (const Decoder d : {kWide3Decoder, kWide5Decoder, kNarrow2Decoder}) {
    if (c.levels >= 4 && c.bits[0] == decoder_bits(d, 1) && c.bits[1] == decoder_bits(d, 2) &&
        c.bits[2] == decoder_bits(d, 3) && c.bits[3] == decoder_bits(d, 4)) {
      return d;
    }
  }
  return kGenericDecoder;
}

template <int D, int kDecoder>
__device__ __forceinline__ void decode_tile(const DeviceCodec& c, const uint8_t* region,
                                            const float* cos_s, const float* sin_s, int slot,
                                            __half* tile, int lane) {
  uint4* row = reinterpret_cast<uint4*>(tile + lane * (D + 8));
#pragma unroll 1
  for (int u = 0; u < D / 16; ++u) {
    float v[16];
    decode_unit<decoder_bits(kDecoder, 1), decoder_bits(kDecoder, 2), decoder_bits(kDecoder, 3),
                decoder_bits(kDecoder, 4)>(c, region, cos_s, sin_s, slot, u, v);
    row[2 * u] = make_uint4(pack_half2(v[0], v[1]), pack_half2(v[2], v[3]), pack_half2(v[4], v[5]),
                            pack_half2(v[6], v[7]));
    row[2 * u + 1] = make_uint4(pack_half2(v[8], v[9]), pack_half2(v[10], v[11]),
                                pack_half2(v[12], v[13]), pack_half2(v[14], v[15]));
  }
}

// Starts the 16-byte copies of page `pg`'s K and V head regions into one buffer (K region, then
// V region): the tile kernel's copy, for any layouts (head_bytes at run time), chunks in place.
__device__ __forceinline__ void fetch_page(const AttnParams& p, int b, int h, int pg, uint8_t* raw,
                                           int lane) {
  const size_t page_id = static_cast<size_t>(p.tables[static_cast<size_t>(b) * p.max_pages + pg]);
  const uint8_t* k =
      p.k_pool + page_id * p.kc.page_bytes + static_cast<size_t>(h) * p.kc.head_bytes;
  const uint8_t* v =
      p.v_pool + page_id * p.vc.page_bytes + static_cast<size_t>(h) * p.vc.head_bytes;
  const int k_chunks = p.kc.head_bytes / 16, v_chunks = p.vc.head_bytes / 16;
  uint8_t* raw_v = raw + p.kc.head_bytes;
  for (int i = lane; i < k_chunks; i += 32) cp_async16(raw + 16 * i, k + 16 * i);
  for (int i = lane; i < v_chunks; i += 32) cp_async16(raw_v + 16 * i, v + 16 * i);
}

template <int D, int kKeyDecoder, int kValueDecoder>
__global__ void __launch_bounds__(kThreads, kMinBlocks) attention_kernel(AttnParams p) {
  extern __shared__ __align__(16) uint8_t smem[];
  const DeviceCodec& kc = p.kc;
  const DeviceCodec& vc = p.vc;
  const SmemPlan plan = smem_plan(kc, vc, D);
  const int h = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int gq = lane / 4, tq = lane % 4;
  constexpr int kStride = D + 8;

  float* k_cos = reinterpret_cast<float*>(smem);
  float* k_sin = k_cos + kc.table_entries;
  float* v_cos = reinterpret_cast<float*>(smem + plan.k_tables);
  float* v_sin = v_cos + vc.table_entries;
  __half* qs = reinterpret_cast<__half*>(smem + plan.k_tables + plan.v_tables);
  const size_t warps_at = plan.k_tables + plan.v_tables + plan.q;
  uint8_t* wbase = smem + warps_at + warp * plan.warp;
  // Buffers are addressed as offsets from the shared array (not through a pointer array), so the
  // compiler keeps shared-memory loads (LDS) instead of generic ones.
  const uint32_t second = (kStages - 1) * (kc.head_bytes + vc.head_bytes);
  __half* tile = reinterpret_cast<__half*>(wbase + plan.pages);

  const auto fetch = [&](int pg, uint8_t* raw) { fetch_page(p, b, h, pg, raw, lane); };
  const PageRange pages = start_pages(p, b, warp, wbase, fetch);

  for (int i = threadIdx.x; i < kc.table_entries; i += kThreads) {
    k_cos[i] = kc.cos_table[i];
    k_sin[i] = kc.sin_table[i];
  }
  for (int i = threadIdx.x; i < vc.table_entries; i += kThreads) {
    v_cos[i] = vc.cos_table[i];
    v_sin[i] = vc.sin_table[i];
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
    const uint8_t* raw_v = raw_k + kc.head_bytes;
    const int valid = min(kc.page_tokens, pages.len - pg * kc.page_tokens);
    float shift[2] = {0.0f, 0.0f};  // this page's score shift of rows gq, gq + 8 (DecodeBatch)
    if (p.page_bias != nullptr) {
      const float* pb =
          p.page_bias + (static_cast<size_t>(b) * p.max_pages + pg) * p.n_q_heads + h * p.g;
      if (gq < p.g) shift[0] = pb[gq] * p.bias_scale;
      if (gq + 8 < p.g) shift[1] = pb[gq + 8] * p.bias_scale;
    }
    for (int tile0 = 0; tile0 < valid; tile0 += kTile) {
      const int valid_t = min(kTile, valid - tile0);
      decode_tile<D, kKeyDecoder>(kc, raw_k, k_cos, k_sin, tile0 + lane, tile, lane);
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
            v = token < valid_t ? v + shift[r] : -INFINITY;
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
      decode_tile<D, kValueDecoder>(vc, raw_v, v_cos, v_sin, tile0 + lane, tile, lane);
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
    return reinterpret_cast<const float*>(smem + warps_at + w * plan.warp + plan.pages);
  });
}

}  // namespace
}  // namespace polarquant::cuda
