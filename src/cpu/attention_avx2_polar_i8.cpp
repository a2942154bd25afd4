// The AVX2 integer score kernel for the generic allocations (docs/BENCHMARKS.md 2.5.7): L = 3..8
// levels, level 1 of 4 bits, or of 5 bits with the half turn (PolarTables::level1_half_turn), as
// in polar4kv's keys (polar-544444) and polar37. Level-1 score tables as int8, 16 entries per pair
// (PolarTables::a1_i8_pair: one vpshufb table per 128-bit lane; at 5 bits bit 4 of the code is a
// sign, vpsignb), pair factors as bytes 0..127 with one scale per token (its largest level-3 node
// radius), products summed by vpmaddubsw and widened to int32. Its scalar twin is
// scalar_score_polar_i8 (kernels_scalar.cpp), which gives the same bits.
//
// 32 slots per pass (4 vectors of 8; 16 at a page's end). Bytes of a pass in the order the packing
// of the factors gives without crossing lanes: lane 0 holds slots 0-3, 8-11 (bytes 0-7) and
// 16-19, 24-27 (bytes 8-15), lane 1 slots 4-7, 12-15 and 20-23, 28-31. Per pair couple (two pairs
// of one level-3 node) the two pairs' looked-up bytes are interleaved (vpunpckl/hbw) so that a
// 16-bit word holds one slot's two products; a level-3 node's two couples add up as int16.
// Built for AVX2 through the target pragma (see attention_avx2_rows.cpp for why not -mavx2).
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "attention/kernels.h"
#include "cpu/attention_avx2.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

#include "cpu/avx2_lanes.h"

namespace polarquant {
namespace {

using namespace avx2;

constexpr int kMaxDim = 512;  // level-3 radii of a pass on the stack: dim / 8 x 4 vectors

// The byte order of a pass (see the top): byte j of lane `lane` holds slot slot_of(lane, j).
constexpr int slot_of(int lane, int j) {
  return (j < 8 ? 0 : 16) + (j % 8 < 4 ? 0 : 8) + 4 * lane + j % 4;
}

// vpshufb control and vpmullw multipliers that gather the 5-bit code of each word's slot from 16
// bytes starting `offset` bytes into the pass's codes (words: lane 0 slots 0-3, 8-11 of the
// 16-slot group, lane 1 slots 4-7, 12-15), leaving it in bits 11-15 after the multiply.
struct Gather5 {
  __m256i control[2], multiplier;
  Gather5() {
    alignas(32) int8_t c[2][32];
    alignas(32) int16_t m[16];
    for (int group = 0; group < 2; ++group) {
      const int offset = 4 * group;  // the second group's 16 bytes start 4 bytes in (20 in all)
      for (int w = 0; w < 16; ++w) {
        const int slot = 16 * group + slot_of(w / 8, w % 8);
        const int bit = 5 * slot - 8 * offset, byte = bit / 8;
        c[group][2 * w] = static_cast<int8_t>(byte);
        c[group][2 * w + 1] = static_cast<int8_t>(byte + 1 < 16 ? byte + 1 : 0x80);
        m[w] = static_cast<int16_t>(1 << (11 - bit % 8));
      }
      control[group] = _mm256_load_si256(reinterpret_cast<const __m256i*>(c[group]));
    }
    multiplier = _mm256_load_si256(reinterpret_cast<const __m256i*>(m));
  }
  __m256i words(__m128i bytes, int group) const {
    const __m256i w = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(bytes), control[group]);
    return _mm256_srli_epi16(_mm256_mullo_epi16(w, multiplier), 11);
  }
};

// The level-1 codes of one field for the 32 (V = 4) or 16 (V = 2) slots from `first`, one byte
// each in the pass's order (bits above the code 0; with V = 2 bytes 8-15 of each lane are junk).
template <int B1, int V>
inline __m256i level1_codes(const uint8_t* field, size_t first, const Gather5& g5) {
  const uint8_t* p = field + first / 8 * B1;
  if constexpr (B1 == 4) {
    // Byte j of a 16-slot group: slot j (low nibble), slot j + 8 (high).
    const __m128i u = V == 4 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p))
                             : _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    const __m256i order = _mm256_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 0, 1, 2, 3, 8, 9, 10, 11,  //
                                           4, 5, 6, 7, 12, 13, 14, 15, 4, 5, 6, 7, 12, 13, 14, 15);
    const __m256i v = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(u), order);
    const __m256i nibble = _mm256_set1_epi8(15);
    return _mm256_unpacklo_epi32(_mm256_and_si256(v, nibble),
                                 _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble));
  } else {
    static_assert(B1 == 5, "4- and 5-bit level 1");
    if constexpr (V == 4) {
      const __m256i a = g5.words(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), 0);
      const __m256i b = g5.words(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 4)), 1);
      return _mm256_packus_epi16(a, b);
    } else {
      uint8_t bytes[16] = {};
      std::memcpy(bytes, p, 10);  // the page's last 16 slots: read no further
      const __m256i a = g5.words(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes)), 0);
      return _mm256_packus_epi16(a, a);
    }
  }
}

// The 16-bit words [f_p, f_q] of 16 slots (vectors v0, v1: lane 0 slots 0-3, 8-11, lane 1 4-7,
// 12-15) from the scaled factors of pairs p and q; values 0..127.
inline __m256i factor_words(__m256 p0, __m256 p1, __m256 q0, __m256 q1) {
  const __m256i p = _mm256_packs_epi32(_mm256_cvtps_epi32(p0), _mm256_cvtps_epi32(p1));
  const __m256i q = _mm256_packs_epi32(_mm256_cvtps_epi32(q0), _mm256_cvtps_epi32(q1));
  return _mm256_or_si256(p, _mm256_slli_epi16(q, 8));
}

// Levels 2 and 3's Q15 cos/sin (PolarTables::q15) as vpshufb byte planes, both lanes.
struct Q15Planes {
  __m256i plane[2][2][2];  // [level - 2][cos, sin][low, high byte]
  explicit Q15Planes(const PolarTables& tb) {
    for (int l = 0; l < 2; ++l) {
      for (int k = 0; k < 2; ++k) {
        alignas(16) uint8_t bytes[2][16];
        for (int c = 0; c < 16; ++c) {
          const auto v = static_cast<uint16_t>(tb.q15[l][k][c]);
          bytes[0][c] = static_cast<uint8_t>(v & 255);
          bytes[1][c] = static_cast<uint8_t>(v >> 8);
        }
        for (int j = 0; j < 2; ++j) {
          plane[l][k][j] = _mm256_broadcastsi128_si256(
              _mm_load_si128(reinterpret_cast<const __m128i*>(bytes[j])));
        }
      }
    }
  }
  // Entry c of table (l, k) per 16-bit word, from the index words (c, 0x80) and (0x80, c).
  __m256i lookup(int l, int k, __m256i lo, __m256i hi) const {
    return _mm256_or_si256(_mm256_shuffle_epi8(plane[l][k][0], lo),
                           _mm256_shuffle_epi8(plane[l][k][1], hi));
  }
};

// The 4-bit codes of the 16 slots from `group` of one field as index words for Q15Planes, in the
// order of a pass's first 8 bytes per lane (words: lane 0 slots 0-3, 8-11, lane 1 4-7, 12-15).
struct NibbleIndex {
  __m256i lo, hi;
  NibbleIndex(const uint8_t* field, size_t group) {
    // Byte j of the group: slot j (low nibble), slot j + 8 (high): split into slot s at byte s.
    const __m128i u = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(field + group / 2));
    const __m128i m = _mm_set1_epi8(15);
    const __m256i c = _mm256_broadcastsi128_si256(
        _mm_unpacklo_epi64(_mm_and_si128(u, m), _mm_and_si128(_mm_srli_epi16(u, 4), m)));
    const int8_t z = static_cast<int8_t>(0x80);
    // vpshufb writes 0 where its control has bit 7: the index bytes 0x80 are or'ed in after.
    lo = _mm256_or_si256(
        _mm256_shuffle_epi8(c,
                            _mm256_setr_epi8(0, z, 1, z, 2, z, 3, z, 8, z, 9, z, 10, z, 11, z,  //
                                             4, z, 5, z, 6, z, 7, z, 12, z, 13, z, 14, z, 15, z)),
        _mm256_set1_epi16(static_cast<int16_t>(0x8000)));
    hi = _mm256_or_si256(
        _mm256_shuffle_epi8(c,
                            _mm256_setr_epi8(z, 0, z, 1, z, 2, z, 3, z, 8, z, 9, z, 10, z, 11,  //
                                             z, 4, z, 5, z, 6, z, 7, z, 12, z, 13, z, 14, z, 15)),
        _mm256_set1_epi16(0x0080));
  }
};

// Levels 3 and 2 of level-3 node `node3` in 16-bit fixed point for the 16 slots of `group`
// (vectors 2 gi, 2 gi + 1, scaled radii ra and rb: Q7 of 127 / the largest): the factor words of
// the node's couples, fw[0] pairs 0 and 1, fw[1] pairs 2 and 3 (scalar_score_polar_i8's q15 path).
inline void q15_factor_words(const PolarTables& tb, const Q15Planes& q, const uint8_t* region,
                             int node3, size_t group, __m256 ra, __m256 rb, __m256i* fw) {
  const __m256i x = _mm256_packs_epi32(_mm256_cvtps_epi32(ra), _mm256_cvtps_epi32(rb));
  const NibbleIndex i3(tb.layout->level_field(region, 3, node3), group);
  const __m256i child[2] = {_mm256_mulhrs_epi16(x, q.lookup(1, 0, i3.lo, i3.hi)),
                            _mm256_mulhrs_epi16(x, q.lookup(1, 1, i3.lo, i3.hi))};
  const __m256i k256 = _mm256_set1_epi16(256);  // (f * 256 + 2^14) >> 15: f / 128 rounded
  for (int j = 0; j < 2; ++j) {
    const NibbleIndex i2(tb.layout->level_field(region, 2, 2 * node3 + j), group);
    const __m256i fc =
        _mm256_mulhrs_epi16(_mm256_mulhrs_epi16(child[j], q.lookup(0, 0, i2.lo, i2.hi)), k256);
    const __m256i fs =
        _mm256_mulhrs_epi16(_mm256_mulhrs_epi16(child[j], q.lookup(0, 1, i2.lo, i2.hi)), k256);
    fw[j] = _mm256_or_si256(fc, _mm256_slli_epi16(fs, 8));
  }
}

template <int L, int B1, int BU, bool Q15, int V>
void score_i8_pass(const PolarTables& tb, const Levels<L>& lv, const Gather5& g5,
                   const Q15Planes& q, const uint8_t* region, size_t slot, size_t first, size_t n,
                   int h0, int gh, float* scores, size_t s_stride) {
  constexpr int kNodes3 = 1 << (L - 3);  // level-3 nodes per block
  constexpr int kHalf = 1 << (L - 1);    // level-1 pairs per block
  const int blocks = tb.dim >> L;
  const size_t pairs = static_cast<size_t>(tb.dim / 2);
  // Levels L..4 of every block and vector: the level-3 radii, and the token's largest of them.
  __m256 r3[kMaxDim / 8 * V];
  __m256 rmax[V], inv[V];
  const __m256 k127 = _mm256_set1_ps(127.0f), scale = _mm256_set1_ps(Q15 ? 16256.0f : 127.0f);
  for (int v = 0; v < V; ++v) {
    rmax[v] = _mm256_setzero_ps();
    for (int b = 0; b < blocks; ++b) {
      __m256* vals = &r3[(b * V + v) * kNodes3];
      vals[0] = load_radii(*tb.layout, tb.radius, region, b, first + 8 * v);
      descend<L, 4, 1, B1, BU>(lv, tb, region, b, first + 16 * (v / 2), v % 2, vals);
      for (int k = 0; k < kNodes3; ++k) rmax[v] = _mm256_max_ps(rmax[v], vals[k]);
    }
    const __m256 positive = _mm256_cmp_ps(rmax[v], _mm256_setzero_ps(), _CMP_GT_OQ);
    inv[v] = _mm256_and_ps(_mm256_div_ps(scale, rmax[v]), positive);
  }
  __m256i acc[kHeadGroup][4];  // per head: even and odd words of slots 0-15, then of 16-31
  for (int i = 0; i < kHeadGroup; ++i)
    for (int j = 0; j < 4; ++j) acc[i][j] = _mm256_setzero_si256();
  const __m256i even_words = _mm256_set1_epi32(1);
  const __m256i sign_bias = _mm256_set1_epi8(0x70);  // code + 0x70 < 0 exactly when bit 4 is set
  for (int b = 0; b < blocks; ++b) {
    for (int k = 0; k < kNodes3; ++k) {
      const int node3 = b * kNodes3 + k;
      __m256i fw[2][2];  // couples (pairs 0, 1) and (2, 3) of the node: slots 0-15, 16-31
      if constexpr (Q15) {
        for (int gi = 0; gi < 2; ++gi) {
          if (gi < V / 2) {
            __m256i w[2];
            q15_factor_words(tb, q, region, node3, first + 16 * gi,
                             _mm256_mul_ps(r3[(b * V + 2 * gi) * kNodes3 + k], inv[2 * gi]),
                             _mm256_mul_ps(r3[(b * V + 2 * gi + 1) * kNodes3 + k], inv[2 * gi + 1]),
                             w);
            fw[0][gi] = w[0];
            fw[1][gi] = w[1];
          } else {
            fw[0][gi] = fw[1][gi] = _mm256_setzero_si256();
          }
        }
      } else {
        // Levels 3 and 2 of node3 from its scaled radius: the factors of its 4 pairs per vector.
        __m256 f[V][4];
        for (int v = 0; v < V; ++v) {
          const size_t group = first + 16 * (v / 2);
          const int half = v % 2;
          const __m256 r = _mm256_mul_ps(r3[(b * V + v) * kNodes3 + k], inv[v]);
          const __m256i c3 = lv.unpack[2].template unpack<BU>(
              tb.layout->level_field(region, 3, node3), group, half);
          const __m256 child[2] = {_mm256_mul_ps(r, lookup<BU>(lv.cos[2], lv.bits[2], c3)),
                                   _mm256_mul_ps(r, lookup<BU>(lv.sin[2], lv.bits[2], c3))};
          for (int j = 0; j < 2; ++j) {
            const __m256i c2 = lv.unpack[1].template unpack<BU>(
                tb.layout->level_field(region, 2, 2 * node3 + j), group, half);
            f[v][2 * j] = _mm256_mul_ps(child[j], lookup<BU>(lv.cos[1], lv.bits[1], c2));
            f[v][2 * j + 1] = _mm256_mul_ps(child[j], lookup<BU>(lv.sin[1], lv.bits[1], c2));
          }
        }
        for (int c = 0; c < 2; ++c) {
          fw[c][0] = factor_words(f[0][2 * c], f[1][2 * c], f[0][2 * c + 1], f[1][2 * c + 1]);
          if constexpr (V == 4) {
            fw[c][1] = factor_words(f[2][2 * c], f[3][2 * c], f[2][2 * c + 1], f[3][2 * c + 1]);
          } else {
            fw[c][1] = _mm256_setzero_si256();
          }
        }
      }
      const int pair0 = b * kHalf + 4 * k;
      __m256i codes[4], sign[4];
      for (int j = 0; j < 4; ++j) {
        codes[j] = level1_codes<B1, V>(tb.layout->level_field(region, 1, pair0 + j), first, g5);
        if constexpr (B1 == 5) sign[j] = _mm256_add_epi8(codes[j], sign_bias);
      }
      const int8_t* t = tb.a1_i8_pair.data() + (h0 * pairs + pair0) * 16;
#pragma GCC unroll 4
      for (int i = 0; i < gh; ++i, t += pairs * 16) {
        __m256i y[4];
        for (int j = 0; j < 4; ++j) {
          const __m256i table =
              _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t) + j));
          y[j] = _mm256_shuffle_epi8(table, codes[j]);
          if constexpr (B1 == 5) y[j] = _mm256_sign_epi8(y[j], sign[j]);
        }
        // The node's 4 products per slot as int16: bounded as in the paper kernel (the scaled
        // factors of a level-3 node have a norm <= 128, 4 table entries <= 254: |sum| <= 32512).
        const __m256i lo =
            _mm256_add_epi16(_mm256_maddubs_epi16(fw[0][0], _mm256_unpacklo_epi8(y[0], y[1])),
                             _mm256_maddubs_epi16(fw[1][0], _mm256_unpacklo_epi8(y[2], y[3])));
        acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(lo, even_words));
        acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_srai_epi32(lo, 16));
        if constexpr (V == 4) {
          const __m256i hi =
              _mm256_add_epi16(_mm256_maddubs_epi16(fw[0][1], _mm256_unpackhi_epi8(y[0], y[1])),
                               _mm256_maddubs_epi16(fw[1][1], _mm256_unpackhi_epi8(y[2], y[3])));
          acc[i][2] = _mm256_add_epi32(acc[i][2], _mm256_madd_epi16(hi, even_words));
          acc[i][3] = _mm256_add_epi32(acc[i][3], _mm256_srai_epi32(hi, 16));
        }
      }
    }
  }
  __m256 tok[V];
  for (int v = 0; v < V; ++v) tok[v] = _mm256_div_ps(rmax[v], k127);
  for (int i = 0; i < gh; ++i) {
    // Even words: slots 0 2 8 10 | 4 6 12 14, odd: 1 3 9 11 | 5 7 13 15 (+16 in acc[i][2..3]).
    __m256i sums[4];
    sums[0] = _mm256_unpacklo_epi32(acc[i][0], acc[i][1]);  // slots 0-7
    sums[1] = _mm256_unpackhi_epi32(acc[i][0], acc[i][1]);  // slots 8-15
    sums[2] = _mm256_unpacklo_epi32(acc[i][2], acc[i][3]);
    sums[3] = _mm256_unpackhi_epi32(acc[i][2], acc[i][3]);
    const __m256 head_scale = _mm256_set1_ps(tb.a1_i8_scale[h0 + i]);
    for (int v = 0; v < V; ++v) {
      const size_t at = first + 8 * v - slot;
      if (at >= n) break;
      const __m256 s =
          _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(sums[v]), tok[v]), head_scale);
      store_scores(scores + (h0 + i) * s_stride + at, n - at, s);
    }
  }
}

template <int L, int B1, int BU, bool Q15>
void score_i8(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
              float* scores, size_t s_stride) {
  const Levels<L> lv(tb);
  const Gather5 g5;
  const Q15Planes q(tb);
  for (size_t first = slot; first < slot + n; first += 32) {
    for (int h0 = 0; h0 < g; h0 += kHeadGroup) {
      const int gh = std::min(g - h0, kHeadGroup);
      // A second group of 16 starts before slot + n, so it lies inside the page.
      if (slot + n - first > 16) {
        score_i8_pass<L, B1, BU, Q15, 4>(tb, lv, g5, q, region, slot, first, n, h0, gh, scores,
                                         s_stride);
      } else {
        score_i8_pass<L, B1, BU, Q15, 2>(tb, lv, g5, q, region, slot, first, n, h0, gh, scores,
                                         s_stride);
      }
    }
  }
}

}  // namespace
}  // namespace polarquant

#pragma GCC pop_options

namespace polarquant {

bool avx2_score_polar_i8(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                         float* scores, size_t s_stride) {
  if (!polar_i8_scores_apply(tb, g) || tb.dim > kMaxDim) return false;
  // L, B1 and (where levels 2..L have one width) BU as compile-time constants, else BU = 0.
  return avx2::with_count<3, avx2::kMaxLevels>(tb.levels, [&](auto l) {
    constexpr int L = decltype(l)::value;
    int upper = tb.bits[1];
    for (int level = 2; level < L; ++level) upper = tb.bits[level] == upper ? upper : 0;
    const bool q15 = polar_i8_q15_levels(tb);  // levels 2 and 3 of 4 bits: BU 4 or 0
    const auto with_b1 = [&](auto bu) {
      constexpr int BU = decltype(bu)::value;
      const auto with_q15 = [&](auto b1) {
        constexpr int B1 = decltype(b1)::value;
        if constexpr (BU == 4 || BU == 0) {
          if (q15) return score_i8<L, B1, BU, true>(tb, region, slot, n, g, scores, s_stride);
        }
        score_i8<L, B1, BU, false>(tb, region, slot, n, g, scores, s_stride);
      };
      if (tb.bits[0] == 4) {
        with_q15(std::integral_constant<int, 4>{});
      } else {
        with_q15(std::integral_constant<int, 5>{});
      }
    };
    if (upper == 2) {
      with_b1(std::integral_constant<int, 2>{});
    } else if (upper == 3) {
      with_b1(std::integral_constant<int, 3>{});
    } else if (upper == 4) {
      with_b1(std::integral_constant<int, 4>{});
    } else {
      with_b1(std::integral_constant<int, 0>{});
    }
  });
}

}  // namespace polarquant
#else
namespace polarquant {
bool avx2_score_polar_i8(const PolarTables&, const uint8_t*, size_t, size_t, int, float*, size_t) {
  return false;
}
}  // namespace polarquant
#endif
