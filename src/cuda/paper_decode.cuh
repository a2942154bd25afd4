// The decoder of the `paper` preset's pages (L = 4, bits 4/2/2/2, fp16 radius) at 32-token
// pages, with the whole layout known at compile time.
//
// Decoding on the GPU is bound by shared-memory bandwidth (one wavefront per 128 bytes or per 32
// lanes' 32-bit accesses, once per cycle per SM), not by arithmetic, so the decoder is built to
// spend as few wavefronts per token as it can (docs/BENCHMARKS.md section 3 counts them):
//  - One lane decodes a *quad* of tokens, slots {i, i+4, i+8, i+12} of a 16-slot group, for one
//    16-coordinate block: in a 2-bit field those four codes are the four bit pairs of one byte, and
//    in a 4-bit field two bytes hold them. Each code byte is loaded once for four tokens.
//  - The upper levels (radius, levels 4, 3, 2) run in half2 on two tokens at once, slots (i, i+4)
//    and (i+8, i+12), whose 2-bit codes are adjacent: the nibble indexes a 16-entry table of
//    (cos a, cos b) / (sin a, sin b) pairs, one 8-byte lookup for both tokens.
//  - Level 1 looks up a 16-entry half2 (cos, sin) table per token and multiplies by that token's
//    half of the pair's level-2 product.
//  - Bank conflicts: the 32 lanes are 8 quads x 4 blocks. Fields of different blocks can share
//    banks (level-1 fields 128 bytes apart, radii fields 64), so the page copy permutes 16-byte
//    chunks (paper_smem_chunk); tile rows are written by quarter-warps whose 8 lanes hit 8
//    distinct bank quadruples.
// The arithmetic is fp16 from the radius down (fp32 before); the tiles are fp16 either way.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/device_codec.h"
#include "cuda/device_common.cuh"

namespace polarquant::cuda {

template <int D>
struct PaperLayout {
  static constexpr int kTokens = 32;
  static constexpr int kRadii = 0;                 // D/16 fields of 32 fp16 radii
  static constexpr int kLevel1 = 4 * D;            // D/2 fields of 16 bytes
  static constexpr int kLevel2 = kLevel1 + 8 * D;  // D/4 fields of 8 bytes
  static constexpr int kLevel3 = kLevel2 + 2 * D;  // D/8 fields of 8 bytes
  static constexpr int kLevel4 = kLevel3 + D;      // D/16 fields of 8 bytes
  static constexpr int kBlocks = D / 16;

  // True when the codec's runtime layout is this one (the dispatcher falls back otherwise).
  static bool matches(const DeviceCodec& c) {
    return c.levels == 4 && c.bits[0] == 4 && c.bits[1] == 2 && c.bits[2] == 2 && c.bits[3] == 2 &&
           c.radius_kind == 0 && c.page_tokens == kTokens && c.dim == D &&
           c.radii_offset == kRadii && c.level_offset[0] == kLevel1 &&
           c.level_offset[1] == kLevel2 && c.level_offset[2] == kLevel3 &&
           c.level_offset[3] == kLevel4 && c.field_bytes[0] == 16 && c.field_bytes[1] == 8;
  }
};

// Where the page copy puts 16-byte chunk `chunk` of a head region in shared memory, so that the
// decoder's lanes (four blocks at a time) hit distinct banks: in the level-1 area field 8u + p
// goes to 8u + (p ^ (u mod 8)); in the radii area, chunks 2m and 2m + 1 of field u (8 radii each)
// swap places when bit 1 of u is set, so radius slot s of field u is read at s ^
// paper_radius_flip(u); the rest stays.
__device__ __forceinline__ int paper_radius_flip(int u) {
  return 8 * ((u >> 1) & 1);
}
template <int D>
__device__ __forceinline__ int paper_smem_chunk(int chunk) {
  constexpr int kRadiiChunks = PaperLayout<D>::kLevel1 / 16, kLevel1Chunks = D / 2;
  if (chunk < kRadiiChunks) return chunk ^ (paper_radius_flip(chunk / 4) / 8);
  const int f = chunk - kRadiiChunks;
  if (f >= kLevel1Chunks) return chunk;
  return kRadiiChunks + (f ^ ((f >> 3) & 7));
}

// Shared-memory tables: level 1's (cos, sin) as half2 (16 entries), and for levels 2, 3, 4 the
// 16 two-token entries {(cos a, cos b), (sin a, sin b)} at nibble a | b << 2.
struct PaperTables {
  __half2 level1[16];
  uint2 pair[3][16];
};

__device__ __forceinline__ uint32_t half2_bits(__half2 h) {
  return *reinterpret_cast<const uint32_t*>(&h);
}
__device__ __forceinline__ __half2 bits_half2(uint32_t u) {
  return *reinterpret_cast<const __half2*>(&u);
}

__device__ __forceinline__ void load_paper_tables(const DeviceCodec& c, PaperTables* t, int tid,
                                                  int threads) {
  load_level1_half2(c, t->level1, tid, threads);
  for (int i = tid; i < 48; i += threads) {
    const int level = i / 16, a = i % 4, b = (i / 4) % 4;
    const int base = c.table_offset[level + 1];
    t->pair[level][i % 16] =
        make_uint2(half2_bits(__floats2half2_rn(c.cos_table[base + a], c.cos_table[base + b])),
                   half2_bits(__floats2half2_rn(c.sin_table[base + a], c.sin_table[base + b])));
  }
}

// One node of levels 2..4 for two token pairs: children (2j, 2j+1) of node j from the field byte
// x (low nibble: pair 0, high nibble: pair 1).
__device__ __forceinline__ void split_node(const uint2* table, unsigned x, __half2 parent0,
                                           __half2 parent1, __half2* cos_child0,
                                           __half2* sin_child0, __half2* cos_child1,
                                           __half2* sin_child1) {
  const uint2 e0 = table[x & 15], e1 = table[x >> 4];
  *cos_child0 = __hmul2(parent0, bits_half2(e0.x));
  *sin_child0 = __hmul2(parent0, bits_half2(e0.y));
  *cos_child1 = __hmul2(parent1, bits_half2(e1.x));
  *sin_child1 = __hmul2(parent1, bits_half2(e1.y));
}

// Decodes a 32-slot page's head region (rotated domain; level-1 area stored with
// paper_smem_chunk) into an fp16 tile whose rows are tokens (D + 8 halves each).
template <int D>
__device__ __forceinline__ void decode_tile_paper(const uint8_t* region, const PaperTables& t,
                                                  int lane, __half* tile) {
  using Lay = PaperLayout<D>;
  const int i = lane & 3, g = lane >> 4;
  const int ub = 2 * ((lane >> 2) & 1) + ((lane >> 3) & 1);  // quarter-warps: blocks {0,2}, {1,3}
  const int slot = 16 * g + i;                               // the quad: slot + 4k, k = 0..3
#pragma unroll 1
  for (int u = ub; u < Lay::kBlocks; u += 4) {
    const __half* radii = reinterpret_cast<const __half*>(region + Lay::kRadii) + u * 32;
    const int flip = paper_radius_flip(u);
    const __half2 r0 = __halves2half2(radii[slot ^ flip], radii[(slot + 4) ^ flip]);  // i, i+4
    const __half2 r1 = __halves2half2(radii[(slot + 8) ^ flip], radii[(slot + 12) ^ flip]);
    const uint8_t* code = region + 4 * g + i;
    __half2 n3[2][2], n2[2][4], n1[2][8];  // [pair][node]
    split_node(t.pair[2], code[Lay::kLevel4 + u * 8], r0, r1, &n3[0][0], &n3[0][1], &n3[1][0],
               &n3[1][1]);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      split_node(t.pair[1], code[Lay::kLevel3 + (2 * u + j) * 8], n3[0][j], n3[1][j], &n2[0][2 * j],
                 &n2[0][2 * j + 1], &n2[1][2 * j], &n2[1][2 * j + 1]);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      split_node(t.pair[0], code[Lay::kLevel2 + (4 * u + j) * 8], n2[0][j], n2[1][j], &n1[0][2 * j],
                 &n1[0][2 * j + 1], &n1[1][2 * j], &n1[1][2 * j + 1]);
    }
    // Level 1: byte 8g + i of a field holds slots i (low) and i+8 (high); byte 8g + i + 4 holds
    // slots i+4 and i+12.
    uint32_t out[4][8];  // [k][pair j]: slot + 4k
    const uint8_t* l1 = region + Lay::kLevel1 + 128 * u + 8 * g + i;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int off = 16 * (j ^ (u & 7));
      const unsigned xa = l1[off], xb = l1[off + 4];
      out[0][j] = half2_bits(__hmul2(__low2half2(n1[0][j]), t.level1[xa & 15]));
      out[1][j] = half2_bits(__hmul2(__high2half2(n1[0][j]), t.level1[xb & 15]));
      out[2][j] = half2_bits(__hmul2(__low2half2(n1[1][j]), t.level1[xa >> 4]));
      out[3][j] = half2_bits(__hmul2(__high2half2(n1[1][j]), t.level1[xb >> 4]));
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      uint4* row = reinterpret_cast<uint4*>(tile + (slot + 4 * k) * (D + 8) + 16 * u);
      row[0] = make_uint4(out[k][0], out[k][1], out[k][2], out[k][3]);
      row[1] = make_uint4(out[k][4], out[k][5], out[k][6], out[k][7]);
    }
  }
}

}  // namespace polarquant::cuda
