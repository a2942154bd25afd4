// The decoder of the `paper` preset's pages (L = 4, bits 4/2/2/2, fp16 radius) at 32-token
// pages, with the whole layout known at compile time: the field offsets fold into load
// immediates, the 2-bit codes pick (cos, sin) pairs from a float2 table, and level 1 multiplies in
// half2 straight into the fp16 tile.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/device_codec.h"

namespace polarquant::cuda {

template <int D>
struct PaperLayout {
  static constexpr int kTokens = 32;
  static constexpr int kRadii = 0;                 // D/16 fields of 32 fp16 radii
  static constexpr int kLevel1 = 4 * D;            // D/2 fields of 16 bytes
  static constexpr int kLevel2 = kLevel1 + 8 * D;  // D/4 fields of 8 bytes
  static constexpr int kLevel3 = kLevel2 + 2 * D;  // D/8 fields of 8 bytes
  static constexpr int kLevel4 = kLevel3 + D;      // D/16 fields of 8 bytes

  // True when the codec's runtime layout is this one (the dispatcher falls back otherwise).
  static bool matches(const DeviceCodec& c) {
    return c.levels == 4 && c.bits[0] == 4 && c.bits[1] == 2 && c.bits[2] == 2 && c.bits[3] == 2 &&
           c.radius_kind == 0 && c.page_tokens == kTokens && c.dim == D &&
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
    t->level1[i] =
        __floats2half2_rn(c.cos_table[c.table_offset[0] + i], c.sin_table[c.table_offset[0] + i]);
  }
}

// Decodes a 32-slot page's head region (rotated domain) into an fp16 tile, two tokens per lane:
// slots i and i + 8 of a 16-slot group share every code byte (4-bit codes in the low and high
// nibble, 2-bit codes at shifts s and s + 4), so one byte load serves both tokens. Lane l decodes
// slots (16 g + i, 16 g + i + 8) with g = (l / 8) % 2, i = l % 8, for the first or second half of
// the blocks (l / 16). `tile` rows are tokens (D + 8 halves each).
template <int D>
__device__ __forceinline__ void decode_tile_paper(const uint8_t* region, const PaperTables& t,
                                                  int lane, __half* tile) {
  using Lay = PaperLayout<D>;
  const int i = lane & 7, g = (lane >> 3) & 1;
  const int slot_a = 16 * g + i, slot_b = slot_a + 8;
  const int s2 = 2 * (i >> 2);  // shift of slot_a's 2-bit codes; slot_b's are 4 bits higher
  const __half* radii = reinterpret_cast<const __half*>(region + Lay::kRadii);
  const uint8_t* l1 = region + Lay::kLevel1 + 8 * g + i;
  const uint8_t* l2 = region + Lay::kLevel2 + 4 * g + (i & 3);
  const uint8_t* l3 = region + Lay::kLevel3 + 4 * g + (i & 3);
  const uint8_t* l4 = region + Lay::kLevel4 + 4 * g + (i & 3);
  uint4* row_a = reinterpret_cast<uint4*>(tile + slot_a * (D + 8));
  uint4* row_b = reinterpret_cast<uint4*>(tile + slot_b * (D + 8));
  const int u0 = (lane >> 4) * (D / 32);
#pragma unroll 1
  for (int k = 0; k < D / 32; ++k) {
    const int u = u0 + k;
    const float ra = __half2float(radii[u * 32 + slot_a]);
    const float rb = __half2float(radii[u * 32 + slot_b]);
    unsigned x = static_cast<unsigned>(l4[u * 8]) >> s2;
    float2 fa = t.upper[8 + (x & 3)], fb = t.upper[8 + ((x >> 4) & 3)];
    const float a3[2] = {ra * fa.x, ra * fa.y}, b3[2] = {rb * fb.x, rb * fb.y};
    float a2[4], b2[4];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      x = static_cast<unsigned>(l3[(2 * u + j) * 8]) >> s2;
      fa = t.upper[4 + (x & 3)];
      fb = t.upper[4 + ((x >> 4) & 3)];
      a2[2 * j] = a3[j] * fa.x;
      a2[2 * j + 1] = a3[j] * fa.y;
      b2[2 * j] = b3[j] * fb.x;
      b2[2 * j + 1] = b3[j] * fb.y;
    }
    float a1[8], b1[8];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      x = static_cast<unsigned>(l2[(4 * u + j) * 8]) >> s2;
      fa = t.upper[x & 3];
      fb = t.upper[(x >> 4) & 3];
      a1[2 * j] = a2[j] * fa.x;
      a1[2 * j + 1] = a2[j] * fa.y;
      b1[2 * j] = b2[j] * fb.x;
      b1[2 * j + 1] = b2[j] * fb.y;
    }
    uint32_t oa[8], ob[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      x = l1[(8 * u + j) * 16];
      const __half2 va = __hmul2(__float2half2_rn(a1[j]), t.level1[x & 15]);
      const __half2 vb = __hmul2(__float2half2_rn(b1[j]), t.level1[x >> 4]);
      oa[j] = *reinterpret_cast<const uint32_t*>(&va);
      ob[j] = *reinterpret_cast<const uint32_t*>(&vb);
    }
    row_a[2 * u] = make_uint4(oa[0], oa[1], oa[2], oa[3]);
    row_a[2 * u + 1] = make_uint4(oa[4], oa[5], oa[6], oa[7]);
    row_b[2 * u] = make_uint4(ob[0], ob[1], ob[2], ob[3]);
    row_b[2 * u + 1] = make_uint4(ob[4], ob[5], ob[6], ob[7]);
  }
}

}  // namespace polarquant::cuda
