// The AVX2 integer score kernel for the paper allocation with the level-1 half turn
// (docs/BENCHMARKS.md 2.5.4): level-1 score tables as int8 (PolarTables::a1_i8, two pairs per
// 16-byte vpshufb table), pair radii as bytes 0..127 with one scale per token, products summed by
// vpmaddubsw and widened to int32. Its scalar twin is scalar_score_paper_i8 (kernels_scalar.cpp),
// which gives the same bits: the integer sums are exact and the float steps happen in the same
// order. Built for AVX2 through the target pragma (see attention_avx2_rows.cpp for why not -mavx2).
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
// after avx2_lanes.h, which it uses
#include "cpu/attention_avx2_paper.h"

namespace polarquant {
namespace {

using namespace avx2;

// The bytes [f_a, f_b] of 16 slots (words 0-7: slots 0-7, words 8-15: slots 8-15) from the scaled
// factors of pairs a and b, slots 0-7 (a0, b0) and 8-15 (a1, b1); values 0..127.
inline __m256i factor_bytes(__m256 a0, __m256 a1, __m256 b0, __m256 b1) {
  const __m256i pa = _mm256_packs_epi32(_mm256_cvtps_epi32(a0), _mm256_cvtps_epi32(a1));
  const __m256i pb = _mm256_packs_epi32(_mm256_cvtps_epi32(b0), _mm256_cvtps_epi32(b1));
  // Words in lane order 0-3, 8-11 | 4-7, 12-15: the 64-bit permute puts the slots in order.
  return _mm256_permute4x64_epi64(_mm256_or_si256(pa, _mm256_slli_epi16(pb, 8)), 0xD8);
}

// G query heads (h0 .. h0 + G - 1), 16 slots per pass.
template <RadiusPrecision R, int G>
void score_i8_heads(const PolarTables& tb, const PaperPage& pg, size_t slot, size_t n, int h0,
                    float* scores, size_t s_stride) {
  const int blocks = tb.dim >> 4;
  const size_t couples = static_cast<size_t>(tb.dim / 4);
  const int8_t* tables = tb.a1_i8.data() + h0 * couples * 16;
  const __m256i low3 = _mm256_set1_epi8(7);
  const __m256i odd_table = _mm256_set1_epi16(0x0800);  // the second pair reads entries 8-15
  const __m256i one = _mm256_set1_epi8(1);
  const __m256i even_words = _mm256_set1_epi32(1);
  const __m256 k127 = _mm256_set1_ps(127.0f);
  for (size_t first = slot; first < slot + n; first += 16) {
    __m256 rmax[2], inv[2];
    for (int half = 0; half < 2; ++half) {
      rmax[half] = pg.radius<R>(0, first + 8 * half);
      for (int b = 1; b < blocks; ++b)
        rmax[half] = _mm256_max_ps(rmax[half], pg.radius<R>(b, first + 8 * half));
      const __m256 positive = _mm256_cmp_ps(rmax[half], _mm256_setzero_ps(), _CMP_GT_OQ);
      inv[half] = _mm256_and_ps(_mm256_div_ps(k127, rmax[half]), positive);
    }
    __m256i even[G], odd[G];
    for (int i = 0; i < G; ++i) even[i] = odd[i] = _mm256_setzero_si256();
    for (int hb = 0; hb < 2 * blocks; ++hb) {
      __m256 f0[4], f1[4];
      pg.half_factors<R>(hb / 2, hb % 2, first, 0, f0, &inv[0]);
      pg.half_factors<R>(hb / 2, hb % 2, first, 1, f1, &inv[1]);
      // The 4 pairs of half block hb (one level-3 node) add up as int16 without overflow: their
      // scaled factors have a norm <= 127 (the node's radius, at most the token's largest block
      // radius times 127 / it), so rounded <= 128, and 4 table entries have a norm <= 254: by
      // Cauchy-Schwarz |sum| <= 128 * 254 = 32512 < 32767 (each vpmaddubsw word: <= 22990).
      __m256i bytes[2], idx[2], sign[2];
#pragma GCC unroll 2
      for (int k = 0; k < 2; ++k) {
        const int a = 4 * hb + 2 * k;  // pairs a and a + 1: couple a / 2
        bytes[k] = factor_bytes(f0[2 * k], f1[2 * k], f0[2 * k + 1], f1[2 * k + 1]);
        // Codes: byte j of a field holds slot j (low nibble) and slot j + 8 (high nibble).
        const uint8_t* ca = pg.level[0] + a * pg.field[0] + first / 2;
        const __m128i u =
            _mm_unpacklo_epi8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(ca)),
                              _mm_loadl_epi64(reinterpret_cast<const __m128i*>(ca + pg.field[0])));
        const __m256i w =
            _mm256_inserti128_si256(_mm256_castsi128_si256(u), _mm_srli_epi16(u, 4), 1);
        idx[k] = _mm256_or_si256(_mm256_and_si256(w, low3), odd_table);
        sign[k] = _mm256_or_si256(_mm256_slli_epi16(w, 4), one);  // bit 3 -> bit 7, never 0
      }
      const int8_t* t = tables + hb * 32;  // couples 2 hb and 2 hb + 1
#pragma GCC unroll 4
      for (int i = 0; i < G; ++i) {
        __m256i x[2];
        for (int k = 0; k < 2; ++k) {
          const __m256i table = _mm256_broadcastsi128_si256(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(t + i * couples * 16 + 16 * k)));
          x[k] = _mm256_maddubs_epi16(
              bytes[k], _mm256_sign_epi8(_mm256_shuffle_epi8(table, idx[k]), sign[k]));
        }
        const __m256i node = _mm256_add_epi16(x[0], x[1]);
        even[i] = _mm256_add_epi32(even[i], _mm256_madd_epi16(node, even_words));
        odd[i] = _mm256_add_epi32(odd[i], _mm256_srai_epi32(node, 16));
      }
    }
    const __m256 tok[2] = {_mm256_div_ps(rmax[0], k127), _mm256_div_ps(rmax[1], k127)};
    for (int i = 0; i < G; ++i) {
      // even: slots 0 2 4 6 | 8 10 12 14, odd: 1 3 5 7 | 9 11 13 15.
      const __m256i lo = _mm256_unpacklo_epi32(even[i], odd[i]);  // 0-3 | 8-11
      const __m256i hi = _mm256_unpackhi_epi32(even[i], odd[i]);  // 4-7 | 12-15
      const __m256i sums[2] = {_mm256_permute2x128_si256(lo, hi, 0x20),
                               _mm256_permute2x128_si256(lo, hi, 0x31)};
      const __m256 head_scale = _mm256_set1_ps(tb.a1_i8_scale[h0 + i]);
      for (int half = 0; half < 2; ++half) {
        const size_t at = first + 8 * half - slot;
        if (at >= n) break;
        const __m256 s =
            _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(sums[half]), tok[half]), head_scale);
        store_scores(scores + (h0 + i) * s_stride + at, n - at, s);
      }
    }
  }
}

template <RadiusPrecision R>
void score_i8(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
              float* scores, size_t s_stride) {
  const PaperPage pg(tb, region);
  for (int h0 = 0; h0 < g; h0 += kHeadGroup) {
    with_count<1, kHeadGroup>(std::min(g - h0, kHeadGroup), [&](auto heads) {
      score_i8_heads<R, decltype(heads)::value>(tb, pg, slot, n, h0, scores, s_stride);
    });
  }
}

}  // namespace
}  // namespace polarquant

#pragma GCC pop_options

namespace polarquant {

bool avx2_score_paper_i8(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                         float* scores, size_t s_stride) {
  if (!is_paper_allocation(tb) || !tb.level1_half_turn ||
      tb.a1_i8.size() < static_cast<size_t>(g) * (tb.dim / 4) * 16 ||
      tb.a1_i8_scale.size() < static_cast<size_t>(g)) {
    return false;
  }
  switch (tb.radius) {
    case RadiusPrecision::kFp16:
      score_i8<RadiusPrecision::kFp16>(tb, region, slot, n, g, scores, s_stride);
      break;
    case RadiusPrecision::kBf16:
      score_i8<RadiusPrecision::kBf16>(tb, region, slot, n, g, scores, s_stride);
      break;
    case RadiusPrecision::kFp32:
      score_i8<RadiusPrecision::kFp32>(tb, region, slot, n, g, scores, s_stride);
      break;
  }
  return true;
}

}  // namespace polarquant
#else
namespace polarquant {
bool avx2_score_paper_i8(const PolarTables&, const uint8_t*, size_t, size_t, int, float*, size_t) {
  return false;
}
}  // namespace polarquant
#endif
