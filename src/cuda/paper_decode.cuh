// The decoders of the `paper` preset's pages (L = 4, bits 4/2/2/2, fp16 radius) at 32-token
// pages, with the whole layout known at compile time, for attention_kernel_frag
// (decode_frag_kernel.cuh, through PaperFmt at the end of this file). They write the decoded values
// straight into the A fragments of the tensor-core MMAs (mma.cuh), so nothing but the page and the
// tables passes through shared memory: the K scores run as S^T = K Q'^T (A = K: rows tokens, k =
// coordinates) and the output as O^T = V^T P^T (A = V^T: rows coordinates, k = tokens);
// docs/design/cuda.md draws the mapping. Token order inside a 16-slot group: MMA row / k index r is
// slot sigma(r) = r / 2 + 8 (r % 2), which lets both the K and the V lanes share code bytes:
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
#include "cuda/mma.cuh"

namespace polarquant::cuda {

template <int D>
struct PaperLayout {
  static constexpr int kTokens = 32;
  static constexpr int kRadii = 0;                    // D/16 fields of 32 fp16 radii
  static constexpr int kLevel1 = 4 * D;               // D/2 fields of 16 bytes
  static constexpr int kLevel2 = kLevel1 + 8 * D;     // D/4 fields of 8 bytes
  static constexpr int kLevel3 = kLevel2 + 2 * D;     // D/8 fields of 8 bytes
  static constexpr int kLevel4 = kLevel3 + D;         // D/16 fields of 8 bytes
  static constexpr int kUsedBytes = kLevel4 + D / 2;  // a head region holds these and padding

  // True when the codec's runtime layout is this one (the dispatcher falls back otherwise).
  static bool matches(const DeviceCodec& c) {
    return !c.pairs && c.levels == 4 && c.bits[0] == 4 && c.bits[1] == 2 && c.bits[2] == 2 &&
           c.bits[3] == 2 && c.radius_kind == 0 && c.page_tokens == kTokens && c.dim == D &&
           c.radii_offset == kRadii && c.level_offset[0] == kLevel1 &&
           c.level_offset[1] == kLevel2 && c.level_offset[2] == kLevel3 &&
           c.level_offset[3] == kLevel4 && c.field_bytes[0] == 16 && c.field_bytes[1] == 8 &&
           c.head_bytes >= kUsedBytes;
  }
};

// Shared-memory tables: level 1's (cos, sin) as half2 (16 entries), and for levels 2, 3, 4 the
// 16 two-token entries {(cos a, cos b), (sin a, sin b)} at nibble a | b << 2.
struct PaperTables {
  uint2 pair[3][16];  // at byte 128 k: the fragment decoders address them by offset
  __half2 level1[16];
};

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
// A level-1 (cos, sin) half2 of a 16-entry table at byte kAt of the tables (paper: 384).
template <int kAt>
__device__ __forceinline__ __half2 level1_entry(uint32_t tab, uint32_t off4) {
  uint32_t v;
  asm("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(((off4 & 0x3C) | tab) + kAt));
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

// The shared-memory image of a head region, as the page copy (FragCopy in decode_frag_kernel.cuh)
// lays it out: every 16-byte chunk keeps its place inside its block's record, and the records are
// *skewed* (a gap of whole chunks before some of them) so that the lanes of one load hit distinct
// banks while each lane's address stays its own base plus a compile-time offset. (A permutation
// inside the records, the earlier scheme, needed an XOR and an add per load.) Per 16-coordinate
// block u: K lanes load blocks u = t + 4 beta together (t = 0..3), V lanes blocks u = g + 8 unit
// (g = 0..7), so the skews separate u = 0..7 modulo 128 bytes:
//  - radii (64-byte fields, K lanes use 4 of 8 words per 32, V lanes 2): field u at
//    64 u + 16 (2 (u >> 1) + (u >> 2)), whose 32-bank offsets are 0, 16, 8, 24, 20, 4, 28, 12
//    words;
//  - level 1 (blocks of eight 16-byte fields): block u at 144 u;
//  - level 2 (blocks of four 8-byte fields): block u at 32 u + 16 (u >> 2);
//  - levels 3 and 4 as in the page (their lanes already fall in distinct banks).
template <int D>
struct PaperSmem {
  using Lay = PaperLayout<D>;
  static constexpr int kUnits = D / 16;
  __host__ __device__ static constexpr int radius(int u) {
    return 64 * u + 16 * (2 * (u >> 1) + (u >> 2));
  }
  static constexpr int kLevel1 = radius(kUnits - 1) + 64;
  __host__ __device__ static constexpr int level1(int u) { return kLevel1 + 144 * u; }
  static constexpr int kLevel2 = level1(kUnits);
  __host__ __device__ static constexpr int level2(int u) {
    return kLevel2 + 32 * u + 16 * (u >> 2);
  }
  static constexpr int kLevel3 = level2(kUnits - 1) + 32;
  __host__ __device__ static constexpr int level3(int u) { return kLevel3 + 16 * u; }
  static constexpr int kLevel4 = kLevel3 + 16 * kUnits;
  __host__ __device__ static constexpr int level4(int u) { return kLevel4 + 8 * u; }
  static constexpr int kBytes = kLevel4 + 8 * kUnits;

  // Byte offset of the region's 16-byte chunk c in the image.
  __host__ __device__ static constexpr int chunk(int c) {
    const int at = 16 * c;
    if (at < Lay::kLevel1) return radius(at / 64) + at % 64;
    if (at < Lay::kLevel2) return level1((at - Lay::kLevel1) / 128) + (at - Lay::kLevel1) % 128;
    if (at < Lay::kLevel3) return level2((at - Lay::kLevel2) / 32) + (at - Lay::kLevel2) % 32;
    return kLevel3 + (at - Lay::kLevel3);
  }
  static_assert(kBytes % 16 == 0 && Lay::kUsedBytes % 16 == 0, "whole chunks");
};

}  // namespace polarquant::cuda

// The compile-time checks of PaperSmem (every chunk placed once, the decoders' loads free of bank
// conflicts).
#include "cuda/paper_smem_check.cuh"

namespace polarquant::cuda {

// Level 1 of a K lane, any layout: entries(p) gives the (cos, sin) of level-1 pair p of the lane's
// two slots as a Level1Pair; n[p] is the two slots' product down to pair p. Calls emit(q, a) with
// the A fragment of slice q: columns 2t..2t+1 are pair 2q, 2t+8..2t+9 pair 2q + 1.
struct Level1Pair {
  __half2 a, b;  // the slot of row gid, of row gid + 8 (slot + 4)
};
template <class Entries, class Emit>
__device__ __forceinline__ void level1_k_fragments(const __half2 n[8], Entries&& entries,
                                                   Emit&& emit) {
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    uint32_t a[4];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int p = 2 * q + h;
      const Level1Pair c = entries(p);
      a[2 * h] = half2_bits(__hmul2(__low2half2(n[p]), c.a));
      a[2 * h + 1] = half2_bits(__hmul2(__high2half2(n[p]), c.b));
    }
    emit(q, a);
  }
}

// Level 1 of a K lane in the host layout (`paper` and `polar37` share it): bytes m and m + 4 of the
// group's 8 bytes at l1 + 16 p hold the lane's two slots (nibble e, moved by rot4).
template <int kAt, class Emit>
__device__ __forceinline__ void level1_k(const uint8_t* l1, uint32_t tab, uint32_t rot4,
                                         const __half2 n[8], Emit&& emit) {
  level1_k_fragments(
      n,
      [&](int p) {
        const uint2 w = *reinterpret_cast<const uint2*>(l1 + 16 * p);
        return Level1Pair{level1_entry<kAt>(tab, __funnelshift_r(w.x, w.x, rot4)),
                          level1_entry<kAt>(tab, __funnelshift_r(w.y, w.y, rot4))};
      },
      emit);
}

// Level 1 of a V lane, pair p: the (cos, sin) of slots i, i + 8 (byte i of word x, nibbles 0 and
// 1: rot4a, rot4b) and i + 4, i + 12 (word y).
struct Level1Quad {
  __half2 c0, c4, c8, c12;
};
template <int kAt>
__device__ __forceinline__ Level1Quad level1_quad(const uint8_t* at, uint32_t tab, uint32_t rot4a,
                                                  uint32_t rot4b) {
  const uint2 w = *reinterpret_cast<const uint2*>(at);
  return {level1_entry<kAt>(tab, __funnelshift_r(w.x, w.x, rot4a)),
          level1_entry<kAt>(tab, __funnelshift_r(w.y, w.y, rot4a)),
          level1_entry<kAt>(tab, __funnelshift_r(w.x, w.x, rot4b)),
          level1_entry<kAt>(tab, __funnelshift_r(w.y, w.y, rot4b))};
}

// The A fragment of a V lane's level-1 pair: the products n0 = (slot i, i + 4) and n1 = (i + 8,
// i + 12) down to the pair, times each slot's (cos, sin); k columns 2i, 2i + 1 are slots i, i + 8,
// columns 2i + 8, 2i + 9 slots i + 4, i + 12.
__device__ __forceinline__ void v_fragment(__half2 n0, __half2 n1, const Level1Quad& c,
                                           uint32_t a[4]) {
  const uint32_t s0 = half2_bits(__hmul2(__low2half2(n0), c.c0));
  const uint32_t s4 = half2_bits(__hmul2(__high2half2(n0), c.c4));
  const uint32_t s8 = half2_bits(__hmul2(__low2half2(n1), c.c8));
  const uint32_t s12 = half2_bits(__hmul2(__high2half2(n1), c.c12));
  a[0] = __byte_perm(s0, s8, 0x5410);
  a[1] = __byte_perm(s0, s8, 0x7632);
  a[2] = __byte_perm(s4, s12, 0x5410);
  a[3] = __byte_perm(s4, s12, 0x7632);
}

// A V lane's split of node j of both token pairs by their pair-table entries e0, e1: node j keeps
// the cos side, node j + w takes the sin side.
template <int kPairs>
__device__ __forceinline__ void split_quad(__half2 (&n)[2][kPairs], uint2 e0, uint2 e1, int j,
                                           int w) {
  const __half2 q0 = n[0][j], q1 = n[1][j];
  n[0][j] = __hmul2(q0, bits_half2(e0.x));
  n[0][j + w] = __hmul2(q0, bits_half2(e0.y));
  n[1][j] = __hmul2(q1, bits_half2(e1.x));
  n[1][j + w] = __hmul2(q1, bits_half2(e1.y));
}

// Both decoders read a 16-slot group grp's code bytes as words: in a 2-bit field the group's
// 4 bytes (byte i holds slots i + 4k at bits 2k), in a level-1 field its 8 bytes (byte b holds
// slots b and b + 8). A lane's nibble is moved to a table offset by one funnel shift and one
// mask (pair_entry, level1_entry), the shift being fixed per lane.

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

// The `paper` format for attention_kernel_frag (decode_frag_kernel.cuh): the layout, the tables and
// the two decoders.
template <int D>
struct PaperFmt {
  using Tables = PaperTables;
  using Lay = PaperLayout<D>;
  using Smem = PaperSmem<D>;
  static constexpr int kTokens = Lay::kTokens;
  static constexpr int kUsedBytes = Lay::kUsedBytes;
  static constexpr int kImage = Smem::kBytes;
  static constexpr const char* kName = "paper-fragments";
  static bool matches(const DeviceCodec& c) { return Lay::matches(c); }
  __device__ static int chunk(int c) { return Smem::chunk(c); }
  __device__ static void load_tables(const DeviceCodec& c, Tables* t, int tid, int threads) {
    load_paper_tables(c, t, tid, threads);
  }

  // K lane: block u of the slots 16 grp + i and 16 grp + i + 4 (i = m + 8e, m < 4), whose 2-bit
  // codes are nibble e of byte m of the group's word, in half2 from the radius down. Calls
  // emit(q, a) with the A fragment of slice q of S^T = K Q'^T: rows gid, gid + 8 are the two slots,
  // columns 2t..2t+1 are level-1 pair 2q of the block and 2t+8..2t+9 pair 2q + 1.
  template <class Emit>
  __device__ __forceinline__ static void decode_k(const uint8_t* region, uint32_t tab, int u,
                                                  int grp, int m, int e, Emit&& emit) {
    const __half* radii = reinterpret_cast<const __half*>(region + Smem::radius(u));
    const int slot = 16 * grp + m + 8 * e;
    const uint32_t rot8 = (8 * m + 4 * e + 29) & 31;  // nibble (m, e) of a code word, times 8
    const uint32_t rot4 = (8 * m + 4 * e + 30) & 31;  // of a level-1 word, times 4
    // n[p]: the two slots' product from the radius down to level-1 pair p. Levels 4, 3, 2 split in
    // place: node n[j] (width w pairs) becomes n[j] (cos side) and n[j + w/2] (sin side).
    __half2 n[8];
    n[0] = __halves2half2(radii[slot], radii[slot + 4]);
    const auto split = [&](int level, int offset, int j, int half) {
      const uint32_t word = *reinterpret_cast<const uint32_t*>(region + offset + 4 * grp);
      const uint2 en = pair_entry(tab, level, __funnelshift_r(word, word, rot8));
      const __half2 parent = n[j];
      n[j] = __hmul2(parent, bits_half2(en.x));
      n[j + half] = __hmul2(parent, bits_half2(en.y));
    };
    split(2, Smem::level4(u), 0, 4);
#pragma unroll
    for (int j = 0; j < 2; ++j) split(1, Smem::level3(u) + 8 * j, 4 * j, 2);
#pragma unroll
    for (int j = 0; j < 4; ++j) split(0, Smem::level2(u) + 8 * j, 2 * j, 1);
    // Level 1: bytes m and m + 4 of the group's 8 bytes hold the two slots (nibble e).
    level1_k<384>(region + Smem::level1(u) + 8 * grp, tab, rot4, n, emit);
  }

  // V lane: level-1 pairs p0 .. p0 + kPairs - 1 of block u (kPairs = 8: the whole block, p0 = 0;
  // 4: the half p0 / 4) for the quad of slots 16 grp + i + 4k (k = 0..3), levels 4..2 in half2 on
  // the token pairs (i, i + 4) and (i + 8, i + 12) (nibbles 0 and 1 of byte i of a code word).
  // Calls emit(p, a) for p = 0 .. kPairs - 1 with the A fragment of O^T += V^T P^T for the group's
  // 16 x 16 tile: rows gid, gid + 8 are coordinates 2 (p0 + p), 2 (p0 + p) + 1 of the block, k the
  // group's slots in sigma order.
  template <int kPairs, class Emit>
  __device__ __forceinline__ static void decode_v(const uint8_t* region, uint32_t tab, int u,
                                                  int p0, int grp, int i, Emit&& emit) {
    static_assert(kPairs == 8 || kPairs == 4, "a whole or a half block");
    const __half* radii = reinterpret_cast<const __half*>(region + Smem::radius(u));
    const int slot = 16 * grp + i;
    const uint32_t rot8a = (8 * i + 29) & 31, rot8b = 8 * i + 1;  // nibbles 0, 1 of byte i, x 8
    const uint32_t rot4a = (8 * i + 30) & 31, rot4b = 8 * i + 2;  // the same, x 4
    const int half = p0 / 4;                                      // kPairs == 4: the level-4 side
    __half2 n[2][kPairs];  // [pair (i, i+4) / (i+8, i+12)][level-1 pair], split in place as in K
    n[0][0] = __halves2half2(radii[slot], radii[slot + 4]);
    n[1][0] = __halves2half2(radii[slot + 8], radii[slot + 12]);
    const auto entries = [&](int level, int offset, uint2* e0, uint2* e1) {
      const uint32_t word = *reinterpret_cast<const uint32_t*>(region + offset + 4 * grp);
      *e0 = pair_entry(tab, level, __funnelshift_r(word, word, rot8a));
      *e1 = pair_entry(tab, level, __funnelshift_r(word, word, rot8b));
    };
    const auto split = [&](int level, int offset, int j, int w) {
      uint2 e0, e1;
      entries(level, offset, &e0, &e1);
      split_quad(n, e0, e1, j, w);
    };
    if constexpr (kPairs == 8) {
      split(2, Smem::level4(u), 0, 4);
#pragma unroll
      for (int j = 0; j < 2; ++j) split(1, Smem::level3(u) + 8 * j, 4 * j, 2);
#pragma unroll
      for (int j = 0; j < 4; ++j) split(0, Smem::level2(u) + 8 * j, 2 * j, 1);
    } else {
      uint2 e0, e1;  // level 4: only this half's side (cos for pairs 0..3, sin for 4..7)
      entries(2, Smem::level4(u), &e0, &e1);
      n[0][0] = __hmul2(n[0][0], bits_half2(half ? e0.y : e0.x));
      n[1][0] = __hmul2(n[1][0], bits_half2(half ? e1.y : e1.x));
      split(1, Smem::level3(u) + 8 * half, 0, 2);
#pragma unroll
      for (int j = 0; j < 2; ++j) split(0, Smem::level2(u) + 8 * (2 * half + j), 2 * j, 1);
    }
    const uint8_t* l1 = region + Smem::level1(u) + 16 * p0 + 8 * grp;
#pragma unroll
    for (int p = 0; p < kPairs; ++p) {
      uint32_t a[4];
      v_fragment(n[0][p], n[1][p], level1_quad<384>(l1 + 16 * p, tab, rot4a, rot4b), a);
      emit(p, a);
    }
  }
};

}  // namespace polarquant::cuda
