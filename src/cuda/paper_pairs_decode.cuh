// The `paper` decoders over the GPU's pairs layout (src/cache/pair_layout.h, docs/FORMAT.md section
// 4.1) for attention_kernel_frag (decode_frag_kernel.cuh, through PaperPairsFmt): the lane mapping,
// tables and fp16 arithmetic of PaperFmt (paper_decode.cuh), so the values and MMA operands are the
// same, but a lane's radii and codes of one block and token pair (s, s + 4) are one 16-byte
// record. A K lane loads one record per block and group, a V lane two (its pairs (i, i + 4) and
// (i + 8, i + 12)), where the host layout took about twenty loads gathered from the fields, and
// every table offset is a shift by a compile-time amount of a word already in registers. The page
// copy keeps each chunk in place: the records are swizzled in the page itself.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "cache/pair_layout.h"
#include "cuda/device_codec.h"
#include "cuda/paper_decode.cuh"

namespace polarquant::cuda {

// w >> s for s >= 0, w << -s otherwise (s is a compile-time constant after unrolling).
__device__ __forceinline__ uint32_t shift_right(uint32_t w, int s) {
  return s >= 0 ? w >> s : w << -s;
}

// Compile-time check that the 16-byte record loads issued together (a quarter warp's eight lanes
// per shared-memory wavefront) hit distinct 16-byte bank groups or the same record.
namespace pairs_check {
constexpr bool quarters_distinct(const int at[32]) {
  for (int i = 0; i < 32; ++i) {
    for (int j = i / 8 * 8; j < i; ++j) {
      if (at[i] != at[j] && (at[i] / 16) % 8 == (at[j] / 16) % 8) return false;
    }
  }
  return true;
}
template <int D>
constexpr bool valid() {
  for (int grp = 0; grp < 2; ++grp) {
    for (int beta = 0; beta < D / 64; ++beta) {  // K lanes (t, m, e): block t + 4 beta, pair m + 4e
      int at[32] = {};
      for (int lane = 0; lane < 32; ++lane) {
        const int t = lane % 4, m = lane / 8, e = (lane / 4) % 2;
        at[lane] = pair_layout::record_at(D, grp, t + 4 * beta, m + 4 * e);
      }
      if (!quarters_distinct(at)) return false;
    }
    for (int unit = 0; unit < (D >= 128 ? D / 128 : 1); ++unit) {  // V lanes (g, t): pairs t, t + 4
      for (int k = 0; k < 8; k += 4) {
        int at[32] = {};
        for (int lane = 0; lane < 32; ++lane) {
          const int g = lane / 4, u = D >= 128 ? g + 8 * unit : g / 2;
          at[lane] = pair_layout::record_at(D, grp, u, lane % 4 + k);
        }
        if (!quarters_distinct(at)) return false;
      }
    }
  }
  return true;
}
}  // namespace pairs_check
static_assert(pairs_check::valid<64>() && pairs_check::valid<128>() && pairs_check::valid<256>(),
              "pair_layout::swizzle: a decoder's record loads conflict in shared memory");

// Level 1 of a K lane from its record's words 2 and 3 (z, w: byte p & 3 of word p / 4 holds pair
// p's codes of the two slots), n[p] the slots' product down to pair p; emit(q, a) as in
// PaperFmt::decode_k. kAt: the level-1 table's byte offset in the tables.
template <int kAt, class Emit>
__device__ __forceinline__ void pairs_level1_k(uint32_t z, uint32_t w, uint32_t tab,
                                               const __half2 n[8], Emit&& emit) {
  level1_k_fragments(
      n,
      [&](int p) {
        const int at = 8 * (p & 3);
        const uint32_t word = p < 4 ? z : w;
        return Level1Pair{level1_entry<kAt>(tab, shift_right(word, at - 2)),
                          level1_entry<kAt>(tab, shift_right(word, at + 2))};
      },
      emit);
}

// Level 1 of a V lane from its two records r0 (slots i, i + 4) and r1 (i + 8, i + 12): pairs
// p0 .. p0 + kPairs - 1 (half = p0 / 4 when kPairs == 4), n[0][p] / n[1][p] the two token pairs'
// products down to pair p; emit(p, a) as in PaperFmt::decode_v.
template <int kAt, int kPairs, class Emit>
__device__ __forceinline__ void pairs_level1_v(const uint4& r0, const uint4& r1, int half,
                                               uint32_t tab, const __half2 (&n)[2][kPairs],
                                               Emit&& emit) {
#pragma unroll
  for (int p = 0; p < kPairs; ++p) {
    const bool high_word = kPairs == 8 ? p >= 4 : half != 0;
    const uint32_t w0 = high_word ? r0.w : r0.z, w1 = high_word ? r1.w : r1.z;
    const int at = 8 * (p & 3);
    const Level1Quad c = {level1_entry<kAt>(tab, shift_right(w0, at - 2)),
                          level1_entry<kAt>(tab, shift_right(w0, at + 2)),
                          level1_entry<kAt>(tab, shift_right(w1, at - 2)),
                          level1_entry<kAt>(tab, shift_right(w1, at + 2))};
    uint32_t a[4];
    v_fragment(n[0][p], n[1][p], c, a);
    emit(p, a);
  }
}

// Levels 4, 3 and 2 of a K lane's token pair, split in place from n[0] (the pair's product down to
// the block) as in PaperFmt: entry(f) gives the pair-table entry {(cos a, cos b), (sin a, sin b)}
// of the record's field f (0: level 4, 1 + j: level-3 node j, 3 + j: level-2 node j).
template <class Entry>
__device__ __forceinline__ void split_k_levels(__half2 (&n)[8], Entry&& entry) {
  const auto split = [&](int field, int j, int half) {
    const uint2 en = entry(field);
    const __half2 parent = n[j];
    n[j] = __hmul2(parent, bits_half2(en.x));
    n[j + half] = __hmul2(parent, bits_half2(en.y));
  };
  split(0, 0, 4);
#pragma unroll
  for (int j = 0; j < 2; ++j) split(1 + j, 4 * j, 2);
#pragma unroll
  for (int j = 0; j < 4; ++j) split(3 + j, 2 * j, 1);
}

// The same for a V lane's two token pairs (n[0], n[1]), down to its kPairs level-1 pairs (4: the
// half block `half` only); entries(f, &e0, &e1) gives both pairs' entries of field f.
template <int kPairs, class Entries>
__device__ __forceinline__ void split_v_levels(__half2 (&n)[2][kPairs], int half,
                                               Entries&& entries) {
  const auto split = [&](int field, int j, int w) {
    uint2 e0, e1;
    entries(field, &e0, &e1);
    split_quad(n, e0, e1, j, w);
  };
  if constexpr (kPairs == 8) {
    split(0, 0, 4);
#pragma unroll
    for (int j = 0; j < 2; ++j) split(1 + j, 4 * j, 2);
#pragma unroll
    for (int j = 0; j < 4; ++j) split(3 + j, 2 * j, 1);
  } else {
    uint2 e0, e1;  // level 4: only this half's side (cos for pairs 0..3, sin for 4..7)
    entries(0, &e0, &e1);
    n[0][0] = __hmul2(n[0][0], bits_half2(half ? e0.y : e0.x));
    n[1][0] = __hmul2(n[1][0], bits_half2(half ? e1.y : e1.x));
    split(1 + half, 0, 2);
#pragma unroll
    for (int j = 0; j < 2; ++j) split(3 + 2 * half + j, 2 * j, 1);
  }
}

// `paper`'s table of field f (PaperTables::pair: level 2 at 0, level 3 at 1, level 4 at 2).
__device__ __forceinline__ int paper_field_table(int field) {
  return field == 0 ? 2 : field < 3 ? 1 : 0;
}

// What both pairs formats share: the region (copied in place: the records are swizzled in the page
// itself) and the record loads. CudaPolarCodec sets `pairs` only for the `paper` (4 levels) and
// `polar37` (6 levels) shapes at 32-token pages.
template <int D, int kLevels>
struct PairsRegion {
  static constexpr int kTokens = pair_layout::kTokens;
  static constexpr int kUsedBytes = static_cast<int>(pair_layout::region_bytes(D));
  static constexpr int kImage = kUsedBytes;
  static bool matches(const DeviceCodec& c) {
    return c.pairs && c.levels == kLevels && c.dim == D && c.page_tokens == kTokens &&
           c.head_bytes >= kUsedBytes;
  }
  __device__ static int chunk(int c) { return 16 * c; }
  __device__ __forceinline__ static uint4 record(const uint8_t* region, int grp, int u, int q) {
    return *reinterpret_cast<const uint4*>(region + pair_layout::record_at(D, grp, u, q));
  }
};

template <int D>
struct PaperPairsFmt : PairsRegion<D, 4> {
  using Tables = PaperTables;
  using PairsRegion<D, 4>::record;
  static constexpr const char* kName = "paper-pairs";
  __device__ static void load_tables(const DeviceCodec& c, Tables* t, int tid, int threads) {
    load_paper_tables(c, t, tid, threads);
  }

  // K lane: block u of slots 16 grp + m + 8e and + 4 (record pair m + 4e); emit(q, a) as in
  // PaperFmt::decode_k.
  template <class Emit>
  __device__ __forceinline__ static void decode_k(const uint8_t* region, uint32_t tab, int u,
                                                  int grp, int m, int e, Emit&& emit) {
    const uint4 r = record(region, grp, u, m + 4 * e);
    __half2 n[8];  // the two slots' product down to level-1 pair p, split in place as in PaperFmt
    n[0] = bits_half2(r.x);
    split_k_levels(n, [&](int f) {
      return pair_entry(tab, paper_field_table(f), shift_right(r.y, 4 * f - 3));
    });
    pairs_level1_k<384>(r.z, r.w, tab, n, emit);
  }

  // V lane: level-1 pairs p0 .. p0 + kPairs - 1 of block u for slots 16 grp + i + 4k (records i
  // and i + 4); emit(p, a) as in PaperFmt::decode_v.
  template <int kPairs, class Emit>
  __device__ __forceinline__ static void decode_v(const uint8_t* region, uint32_t tab, int u,
                                                  int p0, int grp, int i, Emit&& emit) {
    static_assert(kPairs == 8 || kPairs == 4, "a whole or a half block");
    const uint4 r0 = record(region, grp, u, i), r1 = record(region, grp, u, i + 4);
    const int half = p0 / 4;  // kPairs == 4: the level-4 side
    __half2 n[2][kPairs];     // [pair (i, i+4) / (i+8, i+12)][level-1 pair]
    n[0][0] = bits_half2(r0.x);
    n[1][0] = bits_half2(r1.x);
    split_v_levels(n, half, [&](int f, uint2* e0, uint2* e1) {
      *e0 = pair_entry(tab, paper_field_table(f), shift_right(r0.y, 4 * f - 3));
      *e1 = pair_entry(tab, paper_field_table(f), shift_right(r1.y, 4 * f - 3));
    });
    pairs_level1_v<384, kPairs>(r0, r1, half, tab, n, emit);
  }
};

}  // namespace polarquant::cuda
