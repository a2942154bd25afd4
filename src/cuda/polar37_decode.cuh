// The decoder of `polar37`-shaped pages (L = 6, bits 4/3/3/3/3/3, fp16 radius per 64
// coordinates) at 32-token pages. As for `paper` (paper_decode.cuh), the aim is few shared-memory
// wavefronts per decoded token:
//  - One lane decodes an *octet* of consecutive slots (8m .. 8m+7) for one 16-coordinate unit u:
//    in a 3-bit field (packed LSB first) the octet's codes are 24 consecutive bits, read as two
//    32-bit words and a funnel shift; in a 4-bit field (interleaved) they are the low or high
//    nibbles of one 8-byte group. So every code load serves eight tokens.
//  - Per token, levels 6 and 5 contribute the one factor on the unit's path (cos or sin), levels
//    4..2 walk the unit's subtree in fp32 with (cos, sin) float2 lookups, level 1 multiplies a
//    half2 (cos, sin) by the fp16 pair radius straight into the tile.
//  - Banks: the 32 lanes are 4 octets x 8 units. Level-1 fields of different units lie 128 bytes
//    apart, so the page copy stores level-1 field 8u + p at 8u + (p ^ u) (polar37_smem_chunk); the
//    tokens of an octet are visited in an order rotated by u / 4 so that the tile rows written at
//    once fall in distinct bank quadruples.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/device_codec.h"
#include "cuda/device_common.cuh"

namespace polarquant::cuda {

template <int D>
struct Polar37Layout {
  static constexpr int kTokens = 32;
  static constexpr int kUnits = D / 16;

  static bool matches(const DeviceCodec& c) {
    if (c.levels != 6 || c.bits[0] != 4 || c.radius_kind != 0 || c.page_tokens != kTokens ||
        c.dim != D || c.radii_offset != 0 || c.field_bytes[0] != 16 ||
        c.level_offset[0] != static_cast<uint32_t>(D >> 6) * kTokens * 2 ||
        c.level_offset[0] % 16 != 0) {
      return false;
    }
    for (int l = 1; l < 6; ++l) {
      if (c.bits[l] != 3 || c.field_bytes[l] != 12 || c.level_offset[l] % 4 != 0) return false;
    }
    return true;
  }
};

// Where the page copy puts 16-byte chunk `chunk` of a head region: level-1 field 8u + p at
// 8u + (p ^ (u mod 8)), everything else in place.
template <int D>
__device__ __forceinline__ int polar37_smem_chunk(int chunk, int level1_chunk) {
  const int f = chunk - level1_chunk;
  if (f < 0 || f >= D / 2) return chunk;
  return level1_chunk + (f ^ ((f >> 3) & 7));
}

// Level 1's (cos, sin) as half2; levels 2..6's as float2 ((cos, sin) of code c at [l - 2][c]).
struct Polar37Tables {
  __half2 level1[16];
  float2 upper[5][8];
};

__device__ __forceinline__ void load_polar37_tables(const DeviceCodec& c, Polar37Tables* t, int tid,
                                                    int threads) {
  load_level1_half2(c, t->level1, tid, threads);
  for (int i = tid; i < 40; i += threads) {
    const int e = c.table_offset[1 + i / 8] + i % 8;
    t->upper[i / 8][i % 8] = make_float2(c.cos_table[e], c.sin_table[e]);
  }
}

// The octet's 24 code bits of a 3-bit field (token j at bits 3j .. 3j+2).
__device__ __forceinline__ uint32_t octet_bits(const uint8_t* field, int m) {
  const uint32_t* w = reinterpret_cast<const uint32_t*>(field) + (3 * m) / 4;
  return __funnelshift_r(w[0], w[1], 8 * ((3 * m) % 4));
}

// Decodes a 32-slot page's head region (rotated domain; level-1 area stored with
// polar37_smem_chunk) into an fp16 tile whose rows are tokens (D + 8 halves each).
template <int D>
__device__ __forceinline__ void decode_tile_polar37(const DeviceCodec& c, const uint8_t* region,
                                                    const Polar37Tables& t, int lane,
                                                    __half* tile) {
  const int m = lane >> 3, h = m & 1, g = m >> 1;  // octet: slots 8m .. 8m+7 = group g, half h
#pragma unroll 1
  for (int u = lane & 7; u < D / 16; u += 8) {
    const auto field = [&](int level, int node) {
      return region + c.level_offset[level - 1] + node * c.field_bytes[level - 1];
    };
    const uint32_t x6 = octet_bits(field(6, u >> 2), m), x5 = octet_bits(field(5, u >> 1), m);
    const uint32_t x4 = octet_bits(field(4, u), m);
    uint32_t x3[2], x2[4];
    uint2 x1[8];
#pragma unroll
    for (int j = 0; j < 2; ++j) x3[j] = octet_bits(field(3, 2 * u + j), m);
#pragma unroll
    for (int j = 0; j < 4; ++j) x2[j] = octet_bits(field(2, 4 * u + j), m);
    const uint8_t* l1 = region + c.level_offset[0] + 128 * u + 8 * g;
#pragma unroll
    for (int p = 0; p < 8; ++p) x1[p] = *reinterpret_cast<const uint2*>(l1 + 16 * (p ^ (u & 7)));
    const __half* radii = reinterpret_cast<const __half*>(region) + (u >> 2) * 32 + 8 * m;
    const float* up = reinterpret_cast<const float*>(&t.upper[0][0]);  // [level-2][code][cos, sin]
    const int side6 = (u >> 1) & 1, side5 = u & 1;
#pragma unroll 2
    for (int jj = 0; jj < 8; ++jj) {
      const int j = (jj + (u >> 2)) & 7;  // rotated visiting order: distinct banks for the rows
      const int s = 3 * j;
      float r = __half2float(radii[j]);
      r *= up[(4 * 8 + ((x6 >> s) & 7)) * 2 + side6];
      r *= up[(3 * 8 + ((x5 >> s) & 7)) * 2 + side5];
      const float2 f4 = t.upper[2][(x4 >> s) & 7];
      const float a3[2] = {r * f4.x, r * f4.y};
      float a2[4], a1[8];
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const float2 f = t.upper[1][(x3[k] >> s) & 7];
        a2[2 * k] = a3[k] * f.x;
        a2[2 * k + 1] = a3[k] * f.y;
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float2 f = t.upper[0][(x2[k] >> s) & 7];
        a1[2 * k] = a2[k] * f.x;
        a1[2 * k + 1] = a2[k] * f.y;
      }
      uint32_t out[8];
      const int shift = 8 * (j & 3) + 4 * h;
#pragma unroll
      for (int p = 0; p < 8; ++p) {
        const uint32_t word = j < 4 ? x1[p].x : x1[p].y;
        const __half2 v = __hmul2(__float2half2_rn(a1[p]), t.level1[(word >> shift) & 15]);
        out[p] = *reinterpret_cast<const uint32_t*>(&v);
      }
      uint4* row = reinterpret_cast<uint4*>(tile + (8 * m + j) * (D + 8) + 16 * u);
      row[0] = make_uint4(out[0], out[1], out[2], out[3]);
      row[1] = make_uint4(out[4], out[5], out[6], out[7]);
    }
  }
}

}  // namespace polarquant::cuda
