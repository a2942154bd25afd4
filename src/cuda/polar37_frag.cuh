// The register-fragment decoders of `polar37`-shaped pages (L = 6, bits 4/3/3/3/3/3, one fp16
// radius per 64 coordinates, 32-token pages) for attention_kernel_frag (decode_frag_kernel.cuh):
// the lane mapping of `paper`'s decoders (paper_decode.cuh, docs/design/cuda.md), with the 3-bit
// codes of levels 2..6 looked up per token:
//  - a 3-bit field packs slot s at bits 3s .. 3s + 2 (LSB first); a lane's slots s, s + 4, s + 8,
//    s + 12 lie in the 32-bit window from bit 3s (funnel shift of two words), the last one in the
//    window's second word;
//  - levels 6 and 5 contribute the one factor on the block's path (cos or sin by its side);
//  - levels 4, 3, 2 split token pairs in half2 as in `paper`, the pair's (cos a, cos b) and
//    (sin a, sin b) made by two PRMTs from the two tokens' (cos, sin) entries;
//  - level 1 has `paper`'s 4-bit layout and is decoded the same way.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/device_codec.h"
#include "cuda/paper_decode.cuh"

namespace polarquant::cuda {

template <int D>
struct Polar37Frag {
  static constexpr int kTokens = 32;
  static constexpr int kUnits = D / 16;
  __host__ __device__ static constexpr int round16(int x) { return (x + 15) / 16 * 16; }
  // The page layout (docs/FORMAT.md section 4): D / 64 radius fields of 32 fp16, then per level
  // its fields (16 bytes at level 1, 12 bytes at levels 2..6), each level padded to 16 bytes.
  __host__ __device__ static constexpr int level_offset(int l) {  // l = 1..7 (7: the end)
    int at = D;                                                   // after the radii
    for (int k = 1; k < l; ++k) at += round16((D >> k) * (k == 1 ? 16 : 12));
    return at;
  }
  static constexpr int kUsedBytes = level_offset(7);

  // The shared-memory image: level-1 block u (eight 16-byte fields) at level_offset(1) + 144 u, as
  // `paper`'s skew; levels 2..6 follow, shifted by the skew's 16 bytes per block.
  static constexpr int kSkew = 16 * kUnits;
  static constexpr int kImage = round16(kUsedBytes + kSkew);
  __host__ __device__ static constexpr int level1(int u) { return level_offset(1) + 144 * u; }
  // Byte offset in the image of field `node` of level l >= 2.
  __host__ __device__ static constexpr int field(int l, int node) {
    return level_offset(l) + kSkew + 12 * node;
  }
  __host__ __device__ static constexpr int chunk(int c) {
    const int at = 16 * c;
    if (at < level_offset(1)) return at;
    if (at < level_offset(2)) {
      return level1((at - level_offset(1)) / 128) + (at - level_offset(1)) % 128;
    }
    return at + kSkew;
  }

  static bool matches(const DeviceCodec& c) {
    if (c.pairs || c.levels != 6 || c.bits[0] != 4 || c.radius_kind != 0 ||
        c.page_tokens != kTokens || c.dim != D || c.radii_offset != 0 || c.field_bytes[0] != 16 ||
        c.head_bytes < static_cast<uint32_t>(kUsedBytes)) {
      return false;
    }
    for (int l = 1; l <= 6; ++l) {
      if (c.level_offset[l - 1] != static_cast<uint32_t>(level_offset(l))) return false;
      if (l > 1 && (c.bits[l - 1] != 3 || c.field_bytes[l - 1] != 12)) return false;
    }
    return true;
  }
};

// Level 1's (cos, sin) and levels 2..6's, as half2, 512-aligned in shared memory (the lookups OR
// a masked offset into the address).
struct Polar37FragTables {
  __half2 level1[16];
  __half2 upper[5][8];  // level l at [l - 2]
};

__device__ __forceinline__ void load_polar37_frag_tables(const DeviceCodec& c, Polar37FragTables* t,
                                                         int tid, int threads) {
  load_level1_half2(c, t->level1, tid, threads);
  for (int i = tid; i < 40; i += threads) {
    const int e = c.table_offset[1 + i / 8] + i % 8;
    t->upper[i / 8][i % 8] = __floats2half2_rn(c.cos_table[e], c.sin_table[e]);
  }
}

// Level l (2..6) entries by a byte offset already scaled by 4 (bits 2..4: a 3-bit code); level
// 1 goes through paper_decode.cuh's level1_entry<0> (the table opens the struct).
__device__ __forceinline__ __half2 polar37_upper_entry(uint32_t tab, int level, uint32_t off) {
  uint32_t v;
  asm("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(((off & 0x1C) | tab) + 64 + 32 * (level - 2)));
  return bits_half2(v);
}

// The window of a lane's slots in a 3-bit field: bits 3 slot .. 3 slot + 31, from the field's
// words lo and hi (byte offsets; hi clamped to the field's last word, whose bits a window that
// needs no second word discards).
struct Window3 {
  int lo, hi, shift;
};
__device__ __forceinline__ Window3 window3(int slot) {
  const int bit = 3 * slot, k = bit >> 5;
  return {4 * k, 4 * (k < 2 ? k + 1 : 2), bit & 31};
}

// Token pair (a, b) as (cos a, cos b) / (sin a, sin b) from the tokens' (cos, sin) entries.
__device__ __forceinline__ __half2 cos_pair(__half2 a, __half2 b) {
  return bits_half2(__byte_perm(half2_bits(a), half2_bits(b), 0x5410));
}
__device__ __forceinline__ __half2 sin_pair(__half2 a, __half2 b) {
  return bits_half2(__byte_perm(half2_bits(a), half2_bits(b), 0x7632));
}

// The `polar37` format for attention_kernel_frag (decode_frag_kernel.cuh): the layout, the tables
// and the two decoders.
template <int D>
struct Polar37Fmt {
  using Tables = Polar37FragTables;
  using F = Polar37Frag<D>;
  static constexpr int kTokens = F::kTokens;
  static constexpr int kUsedBytes = F::kUsedBytes;
  static constexpr int kImage = F::kImage;
  static constexpr const char* kName = "polar37-fragments";
  static bool matches(const DeviceCodec& c) { return F::matches(c); }
  __device__ static int chunk(int c) { return F::chunk(c); }
  __device__ static void load_tables(const DeviceCodec& c, Tables* t, int tid, int threads) {
    load_polar37_frag_tables(c, t, tid, threads);
  }

  // K lane: block u of the slots 16 grp + m + 8e and that + 4 (PaperFmt::decode_k has the
  // fragment layout); emit(q, a) as there.
  template <class Emit>
  __device__ __forceinline__ static void decode_k(const uint8_t* region, uint32_t tab, int u,
                                                  int grp, int m, int e, Emit&& emit) {
    const int slot = 16 * grp + m + 8 * e;
    const __half* radii = reinterpret_cast<const __half*>(region) + 32 * (u >> 2);
    const Window3 win = window3(slot);
    const auto entries = [&](int l, int node, __half2* ca, __half2* cb) {
      const uint8_t* f = region + F::field(l, node);
      const uint32_t x = __funnelshift_r(*reinterpret_cast<const uint32_t*>(f + win.lo),
                                         *reinterpret_cast<const uint32_t*>(f + win.hi), win.shift);
      *ca = polar37_upper_entry(tab, l, x << 2);
      *cb = polar37_upper_entry(tab, l, x >> 10);
    };
    __half2 n[8];
    n[0] = __halves2half2(radii[slot], radii[slot + 4]);
    // Levels 6 and 5: the cos or the sin of the block's side.
    const uint32_t side6 = (u >> 1) & 1 ? 0x7632 : 0x5410, side5 = u & 1 ? 0x7632 : 0x5410;
    __half2 ca, cb;
    entries(6, u >> 2, &ca, &cb);
    n[0] = __hmul2(n[0], bits_half2(__byte_perm(half2_bits(ca), half2_bits(cb), side6)));
    entries(5, u >> 1, &ca, &cb);
    n[0] = __hmul2(n[0], bits_half2(__byte_perm(half2_bits(ca), half2_bits(cb), side5)));
    const auto split = [&](int l, int node, int j, int half) {
      __half2 a, b;
      entries(l, node, &a, &b);
      const __half2 parent = n[j];
      n[j] = __hmul2(parent, cos_pair(a, b));
      n[j + half] = __hmul2(parent, sin_pair(a, b));
    };
    split(4, u, 0, 4);
#pragma unroll
    for (int j = 0; j < 2; ++j) split(3, 2 * u + j, 4 * j, 2);
#pragma unroll
    for (int j = 0; j < 4; ++j) split(2, 4 * u + j, 2 * j, 1);
    // Level 1 as in paper: bytes m and m + 4 of the group's 8 bytes hold the two slots (nibble e).
    level1_k<0>(region + F::level1(u) + 8 * grp, tab, (8 * m + 4 * e + 30) & 31, n, emit);
  }

  // V lane: level-1 pairs p0 .. p0 + kPairs - 1 of block u for the slots 16 grp + i + 4k
  // (PaperFmt::decode_v has the fragment layout), upper levels in half2 on the token pairs
  // (i, i + 8) and (i + 4, i + 12), which level 1 then needs as they are.
  template <int kPairs, class Emit>
  __device__ __forceinline__ static void decode_v(const uint8_t* region, uint32_t tab, int u,
                                                  int p0, int grp, int i, Emit&& emit) {
    static_assert(kPairs == 8 || kPairs == 4, "a whole or a half block");
    const int slot = 16 * grp + i;
    const __half* radii = reinterpret_cast<const __half*>(region) + 32 * (u >> 2);
    const Window3 win = window3(slot);  // the fourth slot's code: the second word, bit shift + 4
    const int half = p0 / 4;            // kPairs == 4: the level-4 side
    // c[k]: slot i + 4k's (cos, sin) of field `node` of level l.
    const auto entries = [&](int l, int node, __half2 c[4]) {
      const uint8_t* f = region + F::field(l, node);
      const uint32_t hi = *reinterpret_cast<const uint32_t*>(f + win.hi);
      const uint32_t x =
          __funnelshift_r(*reinterpret_cast<const uint32_t*>(f + win.lo), hi, win.shift);
      c[0] = polar37_upper_entry(tab, l, x << 2);
      c[1] = polar37_upper_entry(tab, l, x >> 10);
      c[2] = polar37_upper_entry(tab, l, x >> 22);
      c[3] = polar37_upper_entry(tab, l, hi >> (win.shift + 2));
    };
    __half2 n[2][kPairs];  // [pair (i, i+8) / (i+4, i+12)][level-1 pair], split in place
    n[0][0] = __halves2half2(radii[slot], radii[slot + 8]);
    n[1][0] = __halves2half2(radii[slot + 4], radii[slot + 12]);
    const auto factor = [&](int l, int node, bool sin_side) {
      __half2 c[4];
      entries(l, node, c);
      n[0][0] = __hmul2(n[0][0], sin_side ? sin_pair(c[0], c[2]) : cos_pair(c[0], c[2]));
      n[1][0] = __hmul2(n[1][0], sin_side ? sin_pair(c[1], c[3]) : cos_pair(c[1], c[3]));
    };
    factor(6, u >> 2, (u >> 1) & 1);
    factor(5, u >> 1, u & 1);
    const auto split = [&](int l, int node, int j, int w) {
      __half2 c[4];
      entries(l, node, c);
      const __half2 q0 = n[0][j], q1 = n[1][j];
      n[0][j] = __hmul2(q0, cos_pair(c[0], c[2]));
      n[0][j + w] = __hmul2(q0, sin_pair(c[0], c[2]));
      n[1][j] = __hmul2(q1, cos_pair(c[1], c[3]));
      n[1][j + w] = __hmul2(q1, sin_pair(c[1], c[3]));
    };
    if constexpr (kPairs == 8) {
      split(4, u, 0, 4);
#pragma unroll
      for (int j = 0; j < 2; ++j) split(3, 2 * u + j, 4 * j, 2);
#pragma unroll
      for (int j = 0; j < 4; ++j) split(2, 4 * u + j, 2 * j, 1);
    } else {
      factor(4, u, half);  // only this half's side (cos for pairs 0..3, sin for 4..7)
      split(3, 2 * u + half, 0, 2);
#pragma unroll
      for (int j = 0; j < 2; ++j) split(2, 4 * u + 2 * half + j, 2 * j, 1);
    }
    const uint32_t rot4a = (8 * i + 30) & 31, rot4b = 8 * i + 2;  // nibbles 0, 1 of byte i, x 4
    const uint8_t* l1 = region + F::level1(u) + 16 * p0 + 8 * grp;
#pragma unroll
    for (int p = 0; p < kPairs; ++p) {
      const Level1Quad c = level1_quad<0>(l1 + 16 * p, tab, rot4a, rot4b);
      // k columns 2i, 2i + 1 are slots i, i + 8; columns 2i + 8, 2i + 9 are slots i + 4, i + 12.
      const uint32_t a[4] = {half2_bits(__hmul2(n[0][p], cos_pair(c.c0, c.c8))),
                             half2_bits(__hmul2(n[0][p], sin_pair(c.c0, c.c8))),
                             half2_bits(__hmul2(n[1][p], cos_pair(c.c4, c.c12))),
                             half2_bits(__hmul2(n[1][p], sin_pair(c.c4, c.c12)))};
      emit(p, a);
    }
  }
};

}  // namespace polarquant::cuda
