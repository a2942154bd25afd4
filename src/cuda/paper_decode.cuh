// The decoders of the `paper` preset's pages (L = 4, bits 4/2/2/2, fp16 radius) at 32-token
// pages, with the whole layout known at compile time, for attention_kernel_paper
// (decode_attention.cu). They write the decoded values straight into the A fragments of the
// tensor-core MMAs (mma.cuh), so nothing but the page and the tables passes through shared
// memory: the K scores run as S^T = K Q'^T (A = K: rows tokens, k = coordinates) and the output
// as O^T = V^T P^T (A = V^T: rows coordinates, k = tokens); docs/design/cuda.md draws the
// mapping. Token order inside a 16-slot group: MMA row / k index r is slot
// sigma(r) = r / 2 + 8 (r % 2), which lets both the K and the V lanes share code bytes:
//  - K lane: two slots (i, i + 4), whose 2-bit codes are one nibble of a byte, for whole blocks.
//  - V lane: a quad of slots (i, i + 4, i + 8, i + 12), one byte of every 2-bit field and the
//    token pairs of the level-1 bytes.
//  - Upper levels (radius, levels 4, 3, 2) in half2 on token pairs, a nibble indexing a 16-entry
//    table of (cos a, cos b) / (sin a, sin b) pairs; level 1 a 16-entry half2 (cos, sin) per token.
//  - Decoding is bound by shared-memory wavefronts and instruction issue together
//    (docs/BENCHMARKS.md section 3 counts both); the arithmetic is fp16 from the radius down.
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

  // True when the codec's runtime layout is this one (the dispatcher falls back otherwise).
  static bool matches(const DeviceCodec& c) {
    return c.levels == 4 && c.bits[0] == 4 && c.bits[1] == 2 && c.bits[2] == 2 && c.bits[3] == 2 &&
           c.radius_kind == 0 && c.page_tokens == kTokens && c.dim == D &&
           c.radii_offset == kRadii && c.level_offset[0] == kLevel1 &&
           c.level_offset[1] == kLevel2 && c.level_offset[2] == kLevel3 &&
           c.level_offset[3] == kLevel4 && c.field_bytes[0] == 16 && c.field_bytes[1] == 8;
  }
};

// Shared-memory tables: level 1's (cos, sin) as half2 (16 entries), and for levels 2, 3, 4 the
// 16 two-token entries {(cos a, cos b), (sin a, sin b)} at nibble a | b << 2.
struct PaperTables {
  uint2 pair[3][16];  // at byte 128 k: the fragment decoders address them by offset
  __half2 level1[16];
};

__device__ __forceinline__ uint32_t half2_bits(__half2 h) {
  return *reinterpret_cast<const uint32_t*>(&h);
}
__device__ __forceinline__ __half2 bits_half2(uint32_t u) {
  return *reinterpret_cast<const __half2*>(&u);
}

// Entries of a PaperTables at shared-window address `tab` (512-aligned) by byte offsets that
// come already scaled by the entry size: with the mask in the same operation, an index costs
// one shift and one LOP3, the OR being an add, and the table's offset folds into the load.
__device__ __forceinline__ uint2 pair_entry(uint32_t tab, int level, uint32_t off8) {
  uint2 v;
  asm("ld.shared.v2.b32 {%0, %1}, [%2];\n"
      : "=r"(v.x), "=r"(v.y)
      : "r"(((off8 & 0x78) | tab) + 128 * level));
  return v;
}
__device__ __forceinline__ __half2 level1_entry(uint32_t tab, uint32_t off4) {
  uint32_t v;
  asm("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(((off4 & 0x3C) | tab) + 384));
  return bits_half2(v);
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

// Where the page copy puts 16-byte chunk `chunk` of a head region, so that the fragment lanes hit
// distinct banks: radii field u (4 chunks) swaps chunk pairs (c ^ 2) when bit 1 of u is set; in
// the level-1 area field 8u + p goes to 8u + (p ^ (u mod 8)); in the level-2 area (two 8-byte
// fields per chunk, blocks of two chunks) the two chunks of block u swap when bit 2 of u is set.
__device__ __forceinline__ int paper_radius_flip(int u) {
  return 16 * ((u >> 1) & 1);  // in radius slots
}
__device__ __forceinline__ int paper_level2_flip(int u) {
  return 2 * ((u >> 2) & 1);  // in fields: field 4u + j is stored at 4u + (j ^ flip)
}
template <int D>
__device__ __forceinline__ int paper_smem_chunk(int chunk) {
  using Lay = PaperLayout<D>;
  constexpr int kRadii = Lay::kLevel1 / 16, kLevel1 = D / 2, kLevel2 = D / 8;
  if (chunk < kRadii) return chunk ^ (paper_radius_flip(chunk / 4) / 8);
  int f = chunk - kRadii;
  if (f < kLevel1) return kRadii + (f ^ ((f >> 3) & 7));
  f -= kLevel1;
  if (f < kLevel2) return kRadii + kLevel1 + (f ^ (paper_level2_flip(f / 2) / 2));
  return chunk;
}

// Both decoders read a 16-slot group grp's code bytes as words: in a 2-bit field the group's
// 4 bytes (byte i holds slots i + 4k at bits 2k), in a level-1 field its 8 bytes (byte b holds
// slots b and b + 8). A lane's nibble is moved to a table offset by one funnel shift and one
// mask (pair_entry, level1_entry), the shift being fixed per lane.

// K lane: block u of the slots 16 grp + i and 16 grp + i + 4 (i = m + 8e, m < 4), whose 2-bit
// codes are nibble e of byte m of the group's word, in half2 from the radius down. Calls
// emit(q, a) with the A fragment of slice q of S^T = K Q'^T: rows gid, gid + 8 are the two slots,
// columns 2t..2t+1 are level-1 pair 2q of the block and 2t+8..2t+9 pair 2q + 1.
template <int D, class Emit>
__device__ __forceinline__ void decode_pair_paper(const uint8_t* region, uint32_t tab, int u,
                                                  int grp, int m, int e, Emit&& emit) {
  using Lay = PaperLayout<D>;
  const __half* radii = reinterpret_cast<const __half*>(region + Lay::kRadii) + u * 32;
  const int flip = paper_radius_flip(u), slot = 16 * grp + m + 8 * e;
  const uint32_t rot8 = (8 * m + 4 * e + 29) & 31;  // nibble (m, e) of a code word, times 8
  const uint32_t rot4 = (8 * m + 4 * e + 30) & 31;  // of a level-1 word, times 4
  // n[p]: the two slots' product from the radius down to level-1 pair p. Levels 4, 3, 2 split in
  // place: node n[j] (width w pairs) becomes n[j] (cos side) and n[j + w/2] (sin side).
  __half2 n[8];
  n[0] = __halves2half2(radii[slot ^ flip], radii[(slot + 4) ^ flip]);
  const auto split = [&](int level, int offset, int j, int half) {
    const uint32_t word = *reinterpret_cast<const uint32_t*>(region + offset + 4 * grp);
    const uint2 en = pair_entry(tab, level, __funnelshift_r(word, word, rot8));
    const __half2 parent = n[j];
    n[j] = __hmul2(parent, bits_half2(en.x));
    n[j + half] = __hmul2(parent, bits_half2(en.y));
  };
  split(2, Lay::kLevel4 + 8 * u, 0, 4);
#pragma unroll
  for (int j = 0; j < 2; ++j) split(1, Lay::kLevel3 + 8 * (2 * u + j), 4 * j, 2);
  const int l2 = paper_level2_flip(u);
#pragma unroll
  for (int j = 0; j < 4; ++j) split(0, Lay::kLevel2 + 8 * (4 * u + (j ^ l2)), 2 * j, 1);
  // Level 1: bytes m and m + 4 of the group's 8 bytes hold the two slots (nibble e).
  const uint8_t* l1 = region + Lay::kLevel1 + 128 * u + 8 * grp;
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    uint32_t a[4];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int p = 2 * q + h;
      const uint2 w = *reinterpret_cast<const uint2*>(l1 + 16 * (p ^ (u & 7)));
      a[2 * h] = half2_bits(
          __hmul2(__low2half2(n[p]), level1_entry(tab, __funnelshift_r(w.x, w.x, rot4))));
      a[2 * h + 1] = half2_bits(
          __hmul2(__high2half2(n[p]), level1_entry(tab, __funnelshift_r(w.y, w.y, rot4))));
    }
    emit(q, a);
  }
}

// The level-1 pairs a V lane decodes: kVPairs<D> consecutive pairs of block v_block<D>(gid, unit)
// starting at v_first_pair<D>(gid), for units 0 .. kVUnits<D> - 1. O^T has D / 16 tiles of 16
// coordinates; a lane holds 2 rows of each, i.e. D / 8 coordinates = D / 128 blocks: whole
// blocks gid + 8 unit for D >= 128, half block gid / 2 (pairs 4 (gid % 2) ..) for D = 64.
template <int D>
constexpr int kVPairs = D >= 128 ? 8 : 4;
template <int D>
constexpr int kVUnits = D >= 128 ? D / 128 : 1;
template <int D>
__device__ __forceinline__ int v_block(int gid, int unit) {
  return D >= 128 ? gid + 8 * unit : gid >> 1;
}
template <int D>
__device__ __forceinline__ int v_first_pair(int gid) {
  return D >= 128 ? 0 : 4 * (gid & 1);
}

// V lane: level-1 pairs p0 .. p0 + kPairs - 1 of block u (kPairs = 8: the whole block, p0 = 0;
// 4: the half p0 / 4) for the quad of slots 16 grp + i + 4k (k = 0..3), levels 4..2 in half2 on
// the token pairs (i, i + 4) and (i + 8, i + 12) (nibbles 0 and 1 of byte i of a code word).
// Calls emit(p, a) for p = 0 .. kPairs - 1 with the A fragment of O^T += V^T P^T for the group's
// 16 x 16 tile: rows gid, gid + 8 are coordinates 2 (p0 + p), 2 (p0 + p) + 1 of the block, k the
// group's slots in sigma order.
template <int D, int kPairs, class Emit>
__device__ __forceinline__ void decode_quad_paper(const uint8_t* region, uint32_t tab, int u,
                                                  int p0, int grp, int i, Emit&& emit) {
  static_assert(kPairs == 8 || kPairs == 4, "a whole or a half block");
  using Lay = PaperLayout<D>;
  const __half* radii = reinterpret_cast<const __half*>(region + Lay::kRadii) + u * 32;
  const int flip = paper_radius_flip(u), slot = 16 * grp + i;
  const uint32_t rot8a = (8 * i + 29) & 31, rot8b = 8 * i + 1;  // nibbles 0, 1 of byte i, x 8
  const uint32_t rot4a = (8 * i + 30) & 31, rot4b = 8 * i + 2;  // the same, x 4
  const int half = p0 / 4;                                      // kPairs == 4: the level-4 side
  __half2 n[2][kPairs];  // [pair (i, i+4) / (i+8, i+12)][level-1 pair], split in place as in K
  n[0][0] = __halves2half2(radii[slot ^ flip], radii[(slot + 4) ^ flip]);
  n[1][0] = __halves2half2(radii[(slot + 8) ^ flip], radii[(slot + 12) ^ flip]);
  const auto entries = [&](int level, int offset, uint2* e0, uint2* e1) {
    const uint32_t word = *reinterpret_cast<const uint32_t*>(region + offset + 4 * grp);
    *e0 = pair_entry(tab, level, __funnelshift_r(word, word, rot8a));
    *e1 = pair_entry(tab, level, __funnelshift_r(word, word, rot8b));
  };
  const auto split = [&](int level, int offset, int j, int w) {
    uint2 e0, e1;
    entries(level, offset, &e0, &e1);
    const __half2 q0 = n[0][j], q1 = n[1][j];
    n[0][j] = __hmul2(q0, bits_half2(e0.x));
    n[0][j + w] = __hmul2(q0, bits_half2(e0.y));
    n[1][j] = __hmul2(q1, bits_half2(e1.x));
    n[1][j + w] = __hmul2(q1, bits_half2(e1.y));
  };
  const int l2 = paper_level2_flip(u);
  if constexpr (kPairs == 8) {
    split(2, Lay::kLevel4 + 8 * u, 0, 4);
#pragma unroll
    for (int j = 0; j < 2; ++j) split(1, Lay::kLevel3 + 8 * (2 * u + j), 4 * j, 2);
#pragma unroll
    for (int j = 0; j < 4; ++j) split(0, Lay::kLevel2 + 8 * (4 * u + (j ^ l2)), 2 * j, 1);
  } else {
    uint2 e0, e1;  // level 4: only this half's side (cos for pairs 0..3, sin for 4..7)
    entries(2, Lay::kLevel4 + 8 * u, &e0, &e1);
    n[0][0] = __hmul2(n[0][0], bits_half2(half ? e0.y : e0.x));
    n[1][0] = __hmul2(n[1][0], bits_half2(half ? e1.y : e1.x));
    split(1, Lay::kLevel3 + 8 * (2 * u + half), 0, 2);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      split(0, Lay::kLevel2 + 8 * (4 * u + ((2 * half + j) ^ l2)), 2 * j, 1);
    }
  }
  const uint8_t* l1 = region + Lay::kLevel1 + 128 * u + 8 * grp;
#pragma unroll
  for (int p = 0; p < kPairs; ++p) {
    // Byte i of word x holds slots (i, i + 8), of word y slots (i + 4, i + 12).
    const uint2 w = *reinterpret_cast<const uint2*>(l1 + 16 * ((p0 + p) ^ (u & 7)));
    const __half2 c0 = level1_entry(tab, __funnelshift_r(w.x, w.x, rot4a));
    const __half2 c8 = level1_entry(tab, __funnelshift_r(w.x, w.x, rot4b));
    const __half2 c4 = level1_entry(tab, __funnelshift_r(w.y, w.y, rot4a));
    const __half2 c12 = level1_entry(tab, __funnelshift_r(w.y, w.y, rot4b));
    const uint32_t s0 = half2_bits(__hmul2(__low2half2(n[0][p]), c0));
    const uint32_t s4 = half2_bits(__hmul2(__high2half2(n[0][p]), c4));
    const uint32_t s8 = half2_bits(__hmul2(__low2half2(n[1][p]), c8));
    const uint32_t s12 = half2_bits(__hmul2(__high2half2(n[1][p]), c12));
    // k columns 2i, 2i + 1 are slots i, i + 8; columns 2i + 8, 2i + 9 are slots i + 4, i + 12.
    const uint32_t a[4] = {__byte_perm(s0, s8, 0x5410), __byte_perm(s0, s8, 0x7632),
                           __byte_perm(s4, s12, 0x5410), __byte_perm(s4, s12, 0x7632)};
    emit(p, a);
  }
}

}  // namespace polarquant::cuda
