// The `polar37` decoders over the GPU's pairs layout (src/cache/pair_layout.h, docs/FORMAT.md
// section 4.1) for attention_kernel_frag (decode_frag_kernel.cuh, through Polar37PairsFmt): the
// lane mapping of PaperPairsFmt (paper_pairs_decode.cuh) with polar37's tables and per-token
// lookups of 3-bit codes (polar37_frag.cuh). A lane's block of two tokens is one 16-byte record
// (levels 4..2 as 6-bit (a, b) fields, level 1 as `paper`'s); the 64-coordinate superblock's
// radius and levels 6 and 5 are spread over the spare bits of its four blocks' records, which four
// lanes of the warp hold at once (a K lane's quad, a V lane's blocks 4k..4k+3), so each lane takes
// them with three shuffles of one word instead of loads from other fields.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "cache/pair_layout.h"
#include "cuda/device_codec.h"
#include "cuda/paper_pairs_decode.cuh"
#include "cuda/polar37_frag.cuh"

namespace polarquant::cuda {

// The 3-bit code at bit p (0..63) of a record's first two words x, y, moved to bits 2..4 (the
// upper tables' offset scale); p is a compile-time constant after unrolling.
__device__ __forceinline__ uint32_t code3_at(uint32_t x, uint32_t y, int p) {
  const int s = p - 2;
  if (s < 0) return x << -s;
  if (s < 32) return __funnelshift_r(x, y, s);
  return y >> (s - 32);
}

// A token pair's (cos a, cos b) and (sin a, sin b) as a pair-table entry (split_quad's form) from
// the two tokens' (cos, sin) entries.
__device__ __forceinline__ uint2 pair_of_entries(__half2 a, __half2 b) {
  return make_uint2(half2_bits(cos_pair(a, b)), half2_bits(sin_pair(a, b)));
}

// A superblock share (word 1 of a record j = 0, 1, 2 of the superblock: bits 10..15 the (a, b)
// codes of level 6 or of a level-5 node) as the factor of the given side for the token pair.
__device__ __forceinline__ __half2 share_factor(uint32_t tab, int level, uint32_t share,
                                                bool sin_side) {
  const __half2 ca = polar37_upper_entry(tab, level, share >> 8);
  const __half2 cb = polar37_upper_entry(tab, level, share >> 11);
  return sin_side ? sin_pair(ca, cb) : cos_pair(ca, cb);
}

// The pair-table entry of a record's 6-bit field f (0: level 4, 1 + j: level-3 node j, 3 + j:
// level-2 node j) from the two tokens' (cos, sin) entries.
__device__ __forceinline__ uint2 field_entry(uint32_t tab, const uint4& r, int f) {
  const int level = f == 0 ? 4 : f < 3 ? 3 : 2;
  return pair_of_entries(polar37_upper_entry(tab, level, code3_at(r.x, r.y, 6 * f)),
                         polar37_upper_entry(tab, level, code3_at(r.x, r.y, 6 * f + 3)));
}

template <int D>
struct Polar37PairsFmt : PairsRegion<D, 6> {
  using Tables = Polar37FragTables;
  using PairsRegion<D, 6>::record;
  static constexpr const char* kName = "polar37-pairs";
  __device__ static void load_tables(const DeviceCodec& c, Tables* t, int tid, int threads) {
    load_polar37_frag_tables(c, t, tid, threads);
  }
  // The token pair's radii (a low, b high) and the block's factor from levels 6 and 5, from the
  // superblock's shares s0 (radius of a, level 6), s1 (radius of b, level-5 node 0) and s2
  // (level-5 node 1).
  __device__ __forceinline__ static __half2 path(uint32_t tab, int u, uint32_t s0, uint32_t s1,
                                                 uint32_t s2) {
    const __half2 r = bits_half2(__byte_perm(s0, s1, 0x7632));
    const __half2 f6 = share_factor(tab, 6, s0, (u >> 1) & 1);
    const __half2 f5 = share_factor(tab, 5, (u & 2) ? s2 : s1, u & 1);
    return __hmul2(__hmul2(r, f6), f5);
  }

  // K lane: block u = t + 4 beta of slots 16 grp + m + 8e and + 4 (record pair m + 4e); the lanes
  // t = 0..3 of its quad hold the superblock's four records. emit(q, a) as in PaperFmt::decode_k.
  template <class Emit>
  __device__ __forceinline__ static void decode_k(const uint8_t* region, uint32_t tab, int u,
                                                  int grp, int m, int e, Emit&& emit) {
    const uint4 r = record(region, grp, u, m + 4 * e);
    const int quad = (threadIdx.x & 31) & ~3;
    const uint32_t s0 = __shfl_sync(0xffffffffu, r.y, quad);
    const uint32_t s1 = __shfl_sync(0xffffffffu, r.y, quad + 1);
    const uint32_t s2 = __shfl_sync(0xffffffffu, r.y, quad + 2);
    __half2 n[8];
    n[0] = path(tab, u, s0, s1, s2);
    split_k_levels(n, [&](int f) { return field_entry(tab, r, f); });
    pairs_level1_k<0>(r.z, r.w, tab, n, emit);
  }

  // V lane: level-1 pairs p0 .. p0 + kPairs - 1 of block u for slots 16 grp + i + 4k (records i
  // and i + 4); the superblock's records j are held by the lanes of blocks u - u % 4 + j (same
  // i). emit(p, a) as in PaperFmt::decode_v.
  template <int kPairs, class Emit>
  __device__ __forceinline__ static void decode_v(const uint8_t* region, uint32_t tab, int u,
                                                  int p0, int grp, int i, Emit&& emit) {
    static_assert(kPairs == 8 || kPairs == 4, "a whole or a half block");
    const uint4 r0 = record(region, grp, u, i), r1 = record(region, grp, u, i + 4);
    const int half = p0 / 4;  // kPairs == 4: the level-4 side
    const int lane = threadIdx.x & 31;
    // Lane (g, i) decodes block g + 8 unit (D >= 128) or g / 2 (D = 64): record j's lane.
    const auto source = [&](int j) {
      return D >= 128 ? (lane & ~12) | (j << 2) : (lane & 3) | (j << 3);
    };
    uint32_t s[2][3];
#pragma unroll
    for (int j = 0; j < 3; ++j) {
      s[0][j] = __shfl_sync(0xffffffffu, r0.y, source(j));
      s[1][j] = __shfl_sync(0xffffffffu, r1.y, source(j));
    }
    __half2 n[2][kPairs];  // [pair (i, i+4) / (i+8, i+12)][level-1 pair]
    n[0][0] = path(tab, u, s[0][0], s[0][1], s[0][2]);
    n[1][0] = path(tab, u, s[1][0], s[1][1], s[1][2]);
    split_v_levels(n, half, [&](int f, uint2* e0, uint2* e1) {
      *e0 = field_entry(tab, r0, f);
      *e1 = field_entry(tab, r1, f);
    });
    pairs_level1_v<0, kPairs>(r0, r1, half, tab, n, emit);
  }
};

}  // namespace polarquant::cuda
