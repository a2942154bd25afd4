// Shared pieces of the AVX2 PolarQuant kernels (attention_avx2_polar.cpp and
// attention_avx2_paper.cpp): lane masks, 8-lane table lookups, code unpacking and radius loads.
// Include only after `#pragma GCC target("avx2,fma,f16c")` and <immintrin.h>, in a file that has
// included every header this one includes before the pragma (see attention_avx2_rows.cpp).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "attention/kernels.h"
#include "cache/page_format.h"

namespace polarquant::avx2 {

inline __m256i lane_mask(size_t n) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n < 8 ? n : 8)), lanes);
}

inline void store_scores(float* dst, size_t count, __m256 v) {
  if (count >= 8) {
    _mm256_storeu_ps(dst, v);
  } else {
    _mm256_maskstore_ps(dst, lane_mask(count), v);
  }
}

// table[c & 15] for 8 lanes: 2 permutes of the table's halves, blended on bit 3 (moved to the
// sign bit). Bits of c above bit 3 are ignored.
inline __m256 lookup16(const float* table, __m256i c, __m256 sel) {
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(table), c),
                          _mm256_permutevar8x32_ps(_mm256_loadu_ps(table + 8), c), sel);
}
// table[c & 3] for a table that repeats every 4 entries (codes of 1 or 2 bits: the tables of
// build_polar_tables repeat with the codebook's size): the in-lane vpermilps reads the low 2 bits
// of each lane, and costs a third of the cross-lane vpermps on Zen 3.
inline __m256 lookup4(const float* table, __m256i c) {
  return _mm256_permutevar_ps(_mm256_loadu_ps(table), c);
}
inline __m256 select_bit3(__m256i c) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(c, 28));
}
// Level 1 with the half turn (PolarTables::level1_half_turn, B1 = 4 or 5 bits): entry c + 2^(B1-1)
// is -entry c, so the low B1 - 1 bits are looked up (half_turn_lookup) and bit B1 - 1 becomes the
// sign of the factor (half_turn_sign, xor'ed in).
template <int B1>
inline __m256 half_turn_sign(__m256i c) {
  static_assert(B1 == 4 || B1 == 5, "the half turn is built for 4- and 5-bit level 1");
  return _mm256_and_ps(_mm256_castsi256_ps(_mm256_slli_epi32(c, 32 - B1)),
                       _mm256_castsi256_ps(_mm256_set1_epi32(INT32_MIN)));
}
// Bit 3 of each code as the sign bit (for tables whose entry c + 8 is -entry c).
inline __m256 sign_of_bit3(__m256i c) {
  return half_turn_sign<4>(c);
}

// The codes of slots first + 8 * half + [0, 8) of one field (first a multiple of 16; layout:
// code_bit in cache/page_format.h), one per 32-bit lane. 1-, 2- and 4-bit codes keep the bits
// above the code (the lookups ignore them); other widths are exact.
struct CodeUnpacker {
  enum Kind { kShift, kNibble, kByte, kPacked };
  int bits = 0;
  Kind kind = kPacked;
  __m256i shifts[2] = {};  // kShift: per-lane right shift of the broadcast group, per half
  __m256i lo_shifts = _mm256_setzero_si256(), hi_shifts = _mm256_setzero_si256();  // kPacked
  __m256i mask = _mm256_setzero_si256();

  CodeUnpacker() = default;
  explicit CodeUnpacker(int b) : bits(b) {
    kind = b <= 2 ? kShift : b == 4 ? kNibble : b == 8 ? kByte : kPacked;
    alignas(32) int32_t s[8];
    for (int half = 0; half < 2; ++half) {
      for (int j = 0; j < 8; ++j) s[j] = static_cast<int32_t>(code_bit(8 * half + j, b));
      shifts[half] = _mm256_load_si256(reinterpret_cast<const __m256i*>(s));
    }
    lo_shifts = _mm256_setr_epi64x(0, b, 2 * b, 3 * b);
    hi_shifts = _mm256_setr_epi64x(4 * b, 5 * b, 6 * b, 7 * b);
    mask = _mm256_set1_epi32((1 << b) - 1);
  }

  __m256i operator()(const uint8_t* field, size_t first, int half) const {
    switch (kind) {
      case kShift:
        return shift_codes(field, first, half);
      case kNibble:
        return nibble_codes(field, first, half);
      case kByte:
        return byte_codes(field, first, half);
      case kPacked:
        break;
    }
    return packed_codes(field, first, half);
  }
  // The same with the width known at compile time (B == bits; 0: the run-time kind above).
  template <int B>
  __m256i unpack(const uint8_t* field, size_t first, int half) const {
    if constexpr (B == 0) {
      return (*this)(field, first, half);
    } else if constexpr (B <= 2) {
      return shift_codes(field, first, half);
    } else if constexpr (B == 4) {
      return nibble_codes(field, first, half);
    } else if constexpr (B == 8) {
      return byte_codes(field, first, half);
    } else {
      return packed_codes(field, first, half);
    }
  }

 private:
  const uint8_t* group(const uint8_t* field, size_t first) const {
    return field + first / 8 * bits;
  }
  __m256i shift_codes(const uint8_t* field, size_t first, int half) const {
    uint32_t u;
    std::memcpy(&u, group(field, first), 4);  // a 2-byte group (1 bit) reads 2 bytes more: slack
    return _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(u)), shifts[half]);
  }
  __m256i nibble_codes(const uint8_t* field, size_t first, int half) const {
    const __m256i v = _mm256_cvtepu8_epi32(
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(group(field, first))));
    return half ? _mm256_srli_epi32(v, 4) : v;
  }
  __m256i byte_codes(const uint8_t* field, size_t first, int half) const {
    return _mm256_cvtepu8_epi32(
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(group(field, first) + 8 * half)));
  }
  __m256i packed_codes(const uint8_t* field, size_t first, int half) const {
    // Slots 8 * half + j at bits j * b of the 8 bytes from the group + half * b.
    uint64_t u;
    std::memcpy(&u, group(field, first) + half * bits, 8);
    const __m256i v = _mm256_set1_epi64x(static_cast<long long>(u));
    const __m256i lo = _mm256_srlv_epi64(v, lo_shifts);                         // slots 0-3
    const __m256i hi = _mm256_slli_epi64(_mm256_srlv_epi64(v, hi_shifts), 32);  // slots 4-7
    const __m256i mixed = _mm256_blend_epi32(lo, hi, 0xAA);                     // 0 4 1 5 2 6 3 7
    const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    return _mm256_and_si256(_mm256_permutevar8x32_epi32(mixed, order), mask);
  }
};

template <int B1>
inline __m256 half_turn_lookup(const float* table, __m256i c) {
  static_assert(B1 == 4 || B1 == 5, "the half turn is built for 4- and 5-bit level 1");
  if constexpr (B1 == 4) {
    return _mm256_permutevar8x32_ps(_mm256_loadu_ps(table), c);  // entries 0-7: low 3 bits
  } else {
    return lookup16(table, c, select_bit3(c));
  }
}

// table[c] for exact 5-bit codes (the packed unpacker masks them): two 16-entry lookups blended on
// bit 4 (4 permutes and 3 blends, about half the time of a gather of 8 on Zen 3).
inline __m256 lookup32(const float* table, __m256i c) {
  const __m256 sel3 = select_bit3(c);
  return _mm256_blendv_ps(lookup16(table, c, sel3), lookup16(table + 16, c, sel3),
                          _mm256_castsi256_ps(_mm256_slli_epi32(c, 27)));
}

// A level's table entry per lane, for its width B known at compile time (0: `bits` at run time).
template <int B>
inline __m256 lookup(const float* table, int bits, __m256i c) {
  if constexpr (B == 0) {
    if (bits <= 2) return lookup4(table, c);
    if (bits == 3) return _mm256_permutevar8x32_ps(_mm256_loadu_ps(table), c);
    if (bits == 4) return lookup16(table, c, select_bit3(c));
    if (bits == 5) return lookup32(table, c);
    return _mm256_i32gather_ps(table, c, 4);
  } else if constexpr (B <= 2) {
    return lookup4(table, c);
  } else if constexpr (B == 3) {
    return _mm256_permutevar8x32_ps(_mm256_loadu_ps(table), c);
  } else if constexpr (B == 4) {
    return lookup16(table, c, select_bit3(c));
  } else if constexpr (B == 5) {
    return lookup32(table, c);
  } else {
    return _mm256_i32gather_ps(table, c, 4);
  }
}

inline __m256 load_radii(const PolarPageLayout& layout, RadiusPrecision radius,
                         const uint8_t* region, int block, size_t first) {
  const uint8_t* p =
      region + layout.radii_offset +
      (static_cast<size_t>(block) * layout.page_tokens + first) * layout.radius_bytes;
  switch (radius) {
    case RadiusPrecision::kFp16:
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    case RadiusPrecision::kBf16:
      return _mm256_castsi256_ps(_mm256_slli_epi32(
          _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
    case RadiusPrecision::kFp32:
      break;
  }
  return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
}

// Lanes per coordinate of the value accumulators (KernelSet::value_lanes): one ymm register; both
// halves of a 16-slot group add into the same 8 lanes.
constexpr int kLanes = 8;

constexpr int kHeadGroup = 4;  // query heads scored per pass over the codes (16 ymm registers)

// The value kernels' passes over V vectors of 8 slots (attention_avx2_paper.cpp,
// attention_avx2_polar.cpp; docs/BENCHMARKS.md 2.5.5). copy_weights: rows h < gh of p (stride
// p_stride) at slots `at` + 8v, lanes at or past n set to 0, into w (gh x V x 8 floats, aligned).
inline void copy_weights(const float* p, size_t p_stride, int gh, size_t at, size_t n, int vectors,
                         float* w) {
  for (int v = 0; v < vectors; ++v) {
    const size_t from = at + 8 * v;
    const __m256i keep = lane_mask(from < n ? n - from : 0);
    for (int h = 0; h < gh; ++h) {
      _mm256_store_ps(w + (h * vectors + v) * 8, _mm256_maskload_ps(p + h * p_stride + from, keep));
    }
  }
}
// One level-1 pair's two coordinates y[v][0..1] of the V vectors into each of gh heads' two lane
// accumulators (acc: the first head's, head_stride floats apart): V FMAs each, weights from w.
template <int V>
__attribute__((always_inline)) inline void accumulate_pair(float* acc, size_t head_stride,
                                                           const float* w, int gh,
                                                           const __m256 (&y)[V][2]) {
#pragma GCC unroll 4
  for (int h = 0; h < gh; ++h, acc += head_stride, w += V * 8) {
    __m256 a0 = _mm256_loadu_ps(acc), a1 = _mm256_loadu_ps(acc + kLanes);
    for (int v = 0; v < V; ++v) {
      const __m256 wv = _mm256_load_ps(w + 8 * v);
      a0 = _mm256_fmadd_ps(wv, y[v][0], a0);
      a1 = _mm256_fmadd_ps(wv, y[v][1], a1);
    }
    _mm256_storeu_ps(acc, a0);
    _mm256_storeu_ps(acc + kLanes, a1);
  }
}

// Runs the value passes of slots [slot, slot + n) for g heads: heads in chunks of up to 16, slots
// in passes of 4 vectors (32 slots) while more than 16 remain, then 2 or 1 (a second group may be
// partial: its lanes past n weigh 0, and its codes lie inside the page, whose token count is a
// multiple of 16). Each pass's weights are copied into one aligned buffer first; then
// pass(std::integral_constant<int, V>, first, gh, w, acc) with acc the chunk's first head's lane
// accumulators (dim x kLanes floats per head).
template <class Pass>
__attribute__((always_inline)) inline void value_passes(size_t slot, size_t n, int g, int dim,
                                                        const float* p, size_t p_stride,
                                                        float* acc_lanes, Pass&& pass) {
  constexpr int kMaxHeads = 16;
  alignas(32) float w[kMaxHeads * 4 * 8];
  for (int h0 = 0; h0 < g; h0 += kMaxHeads) {
    const int gh = g - h0 < kMaxHeads ? g - h0 : kMaxHeads;
    float* acc = acc_lanes + static_cast<size_t>(h0) * dim * kLanes;
    for (size_t first = slot; first < slot + n;) {
      const size_t left = slot + n - first;
      const int vectors = left > 16 ? 4 : left > 8 ? 2 : 1;
      copy_weights(p + h0 * p_stride, p_stride, gh, first - slot, n, vectors, w);
      if (vectors == 4) {
        pass(std::integral_constant<int, 4>{}, first, gh, w, acc);
      } else if (vectors == 2) {
        pass(std::integral_constant<int, 2>{}, first, gh, w, acc);
      } else {
        pass(std::integral_constant<int, 1>{}, first, gh, w, acc);
      }
      first += 8 * static_cast<size_t>(vectors);
    }
  }
}

template <int Lo, int Hi, class F>
bool with_count(int v, F&& f) {
  if constexpr (Lo > Hi) {
    return false;
  } else {
    if (v == Lo) {
      f(std::integral_constant<int, Lo>{});
      return true;
    }
    return with_count<Lo + 1, Hi>(v, std::forward<F>(f));
  }
}

constexpr int kMaxLevels = 8;  // deeper trees use the scalar set (attention_avx2_polar.cpp)

// ---- Any allocation of up to kMaxLevels levels ------------------------------------------------
// Every kernel takes the widths as template arguments B1 (level 1) and BU (levels 2..L), 0 where
// they are read at run time; the allocations with one width above level 1 (every preset and
// polar4kv's two codecs) get their unpacking and lookups resolved at compile time (the run-time
// width costs a chain of branches per lookup, and gathers for 5-bit codes).

template <int L>
struct Levels {
  CodeUnpacker unpack[L];
  int bits[L];
  const float* cos[L];
  const float* sin[L];
  explicit Levels(const PolarTables& tb) {
    for (int l = 0; l < L; ++l) {
      unpack[l] = CodeUnpacker(tb.bits[l]);
      bits[l] = tb.bits[l];
      cos[l] = tb.cos[l].data();
      sin[l] = tb.sin[l].data();
    }
  }
};

// Top-down decode of one block for 8 slots, from level Level down to level Stop (widths BU above
// level 1, B1 at level 1); vals[k] holds node k of level Level on entry.
template <int Level, int Stop, int Count, int B1, int BU, int L>
inline void descend(const Levels<L>& lv, const PolarTables& tb, const uint8_t* region, int b,
                    size_t first, int half, __m256* vals) {
  if constexpr (Level >= Stop) {
    constexpr int B = Level == 1 ? B1 : BU;
#pragma GCC unroll 128
    for (int k = Count - 1; k >= 0; --k) {
      const __m256i c = lv.unpack[Level - 1].template unpack<B>(
          tb.layout->level_field(region, Level, b * Count + k), first, half);
      const __m256 r = vals[k];
      vals[2 * k] = _mm256_mul_ps(r, lookup<B>(lv.cos[Level - 1], lv.bits[Level - 1], c));
      vals[2 * k + 1] = _mm256_mul_ps(r, lookup<B>(lv.sin[Level - 1], lv.bits[Level - 1], c));
    }
    descend<Level - 1, Stop, Count * 2, B1, BU>(lv, tb, region, b, first, half, vals);
  }
}

// Calls f(L, B1, BU) as compile-time constants: the widths of this allocation where every level
// above level 1 has one width of 2, 3 or 4 bits and level 1 has 4 or 5 (the presets, polar4kv's
// codecs and their relatives), else the run-time widths (B1 = BU = 0). False past kMaxLevels.
template <class F>
bool with_widths(const PolarTables& tb, F&& f) {
  return with_count<1, kMaxLevels>(tb.levels, [&](auto levels) {
    constexpr int L = decltype(levels)::value;
    int upper = L > 1 ? tb.bits[1] : 0;
    for (int l = 2; l < L; ++l) upper = tb.bits[l] == upper ? upper : -1;
    const auto with_upper = [&](auto b1) {
      if constexpr (L >= 2) {
        if (upper == 2) return f(levels, b1, std::integral_constant<int, 2>{});
        if (upper == 3) return f(levels, b1, std::integral_constant<int, 3>{});
        if (upper == 4) return f(levels, b1, std::integral_constant<int, 4>{});
      }
      f(levels, std::integral_constant<int, 0>{}, std::integral_constant<int, 0>{});
    };
    if (tb.bits[0] == 4) {
      with_upper(std::integral_constant<int, 4>{});
    } else if (tb.bits[0] == 5) {
      with_upper(std::integral_constant<int, 5>{});
    } else {
      f(levels, std::integral_constant<int, 0>{}, std::integral_constant<int, 0>{});
    }
  });
}

}  // namespace polarquant::avx2
