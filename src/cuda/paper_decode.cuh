// The decoder of the `paper` preset's pages (L = 4, bits 4/2/2/2, fp16 radius) at 32-token
// pages, with the whole layout known at compile time. A lane decodes one token's 16-coordinate
// blocks: the field offsets fold into load immediates, the 2-bit codes pick (cos, sin) pairs
// from a float2 table, and level 1 multiplies in half2 straight into the fp16 tile.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/device_codec.h"

namespace polarquant::cuda {

template <int D>
struct PaperLayout {
  static constexpr int kTokens = 32;
  static constexpr int kRadii = 0;             // D/16 fields of 32 fp16 radii
  static constexpr int kLevel1 = 4 * D;        // D/2 fields of 16 bytes
  static constexpr int kLevel2 = kLevel1 + 8 * D;  // D/4 fields of 8 bytes
  static constexpr int kLevel3 = kLevel2 + 2 * D;  // D/8 fields of 8 bytes
  static constexpr int kLevel4 = kLevel3 + D;      // D/16 fields of 8 bytes

  // True when the codec's runtime layout is this one (the dispatcher falls back otherwise).
  static bool matches(const DeviceCodec& c) {
    return c.levels == 4 && c.bits[0] == 4 && c.bits[1] == 2 && c.bits[2] == 2 &&
           c.bits[3] == 2 && c.radius_kind == 0 && c.page_tokens == kTokens && c.dim == D &&
           c.radii_offset == kRadii && c.level_offset[0] == kLevel1 &&
           c.level_offset[1] == kLevel2 && c.level_offset[2] == kLevel3 &&
           c.level_offset[3] == kLevel4 && c.field_bytes[0] == 16 && c.field_bytes[1] == 8;
  }
};

// Shared-memory tables of the fast path: (cos, sin) of levels 2..4 as float2 (4 entries each,
// level l at 4 * (l - 2)), and level 1's as half2 (16 entries).
struct PaperTables {
  float2 upper[12];
  __half2 level1[16];
};

__device__ __forceinline__ void load_paper_tables(const DeviceCodec& c, PaperTables* t, int tid,
                                                  int threads) {
  for (int i = tid; i < 12; i += threads) {
    const int e = c.table_offset[1 + i / 4] + i % 4;
    t->upper[i] = make_float2(c.cos_table[e], c.sin_table[e]);
  }
  for (int i = tid; i < 16; i += threads) {
    t->level1[i] = __floats2half2_rn(c.cos_table[c.table_offset[0] + i], c.sin_table[c.table_offset[0] + i]);
  }
}

// Decodes token `slot` (0..31) of a page's head region into row `row` of an fp16 tile
// (D halves, rotated domain). code_bit (device_common.cuh) places slot i of a 16-slot group in
// byte i mod 2b at bit b * (i div 2b).
template <int D>
__device__ __forceinline__ void decode_row_paper(const uint8_t* region, const PaperTables& t,
                                                 int slot, uint4* row) {
  using Lay = PaperLayout<D>;
  const int b4 = (slot >> 4) * 8 + (slot & 7), s4 = ((slot >> 3) & 1) * 4;
  const int b2 = (slot >> 4) * 4 + (slot & 3), s2 = ((slot >> 2) & 3) * 2;
  const __half* radii = reinterpret_cast<const __half*>(region + Lay::kRadii) + slot;
  const uint8_t* l1 = region + Lay::kLevel1 + b4;
  const uint8_t* l2 = region + Lay::kLevel2 + b2;
  const uint8_t* l3 = region + Lay::kLevel3 + b2;
  const uint8_t* l4 = region + Lay::kLevel4 + b2;
#pragma unroll 2  // two independent blocks in flight hide the shared-memory latency
  for (int u = 0; u < D / 16; ++u) {
    const float r = __half2float(radii[u * 32]);
    const float2 f4 = t.upper[8 + ((l4[u * 8] >> s2) & 3)];
    float r3[2] = {r * f4.x, r * f4.y};
    float r2[4];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const float2 f = t.upper[4 + ((l3[(2 * u + j) * 8] >> s2) & 3)];
      r2[2 * j] = r3[j] * f.x;
      r2[2 * j + 1] = r3[j] * f.y;
    }
    float r1[8];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = t.upper[(l2[(4 * u + j) * 8] >> s2) & 3];
      r1[2 * j] = r2[j] * f.x;
      r1[2 * j + 1] = r2[j] * f.y;
    }
    uint32_t out[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const __half2 cs = t.level1[(l1[(8 * u + j) * 16] >> s4) & 15];
      const __half2 v = __hmul2(__float2half2_rn(r1[j]), cs);
      out[j] = *reinterpret_cast<const uint32_t*>(&v);
    }
    row[2 * u] = make_uint4(out[0], out[1], out[2], out[3]);
    row[2 * u + 1] = make_uint4(out[4], out[5], out[6], out[7]);
  }
}

}  // namespace polarquant::cuda
