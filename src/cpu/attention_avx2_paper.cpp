// The AVX2 kernels for the paper allocation (L = 4, bits 4,2,2,2): the arithmetic of the generic
// AVX2 kernels at L = 4 (attention_avx2_polar.cpp), with every width known at compile time, the
// level-2..4 cos/sin tables read by the in-lane vpermilps (lookup4) straight from L1, and the
// level-1 half-turn symmetry (PolarTables::level1_half_turn) used when the codebook has it. Built
// for AVX2 through the target pragma (see attention_avx2_rows.cpp for why not -mavx2).
#include <algorithm>
#include <climits>
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

// G query heads (h0 .. h0 + G - 1), 8 slots per pass.
template <RadiusPrecision R, int G, bool HalfTurn>
void score_paper_heads(const PolarTables& tb, const PaperPage& pg, size_t slot, size_t n, int h0,
                       float* scores, size_t s_stride) {
  const int blocks = tb.dim >> 4;
  const size_t pairs = static_cast<size_t>(tb.dim / 2);
  const float* a1 = tb.a1.data() + h0 * pairs * 16;
  for (size_t first = slot; first < slot + n; first += 16) {
    for (int half = 0; half < 2; ++half) {
      const size_t at = first + 8 * half - slot;
      if (at >= n) break;
      __m256 acc[G];
      for (int i = 0; i < G; ++i) acc[i] = _mm256_setzero_ps();
      for (int hb = 0; hb < 2 * blocks; ++hb) {
        __m256 f[4];
        pg.half_factors<R>(hb / 2, hb % 2, first, half, f);
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) {
          const int pair = 4 * hb + k;
          const __m256i c = pg.codes1(pair, first, half);
          if constexpr (HalfTurn) {  // a1[c + 8] = -a1[c]: the sign goes into the factor
            const __m256 fs = _mm256_xor_ps(f[k], sign_of_bit3(c));
#pragma GCC unroll 4
            for (int i = 0; i < G; ++i) {
              acc[i] =
                  _mm256_fmadd_ps(fs, PaperPage::perm(a1 + (i * pairs + pair) * 16, c), acc[i]);
            }
          } else {
            const __m256 sel = select_bit3(c);
#pragma GCC unroll 4
            for (int i = 0; i < G; ++i) {
              acc[i] =
                  _mm256_fmadd_ps(f[k], lookup16(a1 + (i * pairs + pair) * 16, c, sel), acc[i]);
            }
          }
        }
      }
      for (int i = 0; i < G; ++i) store_scores(scores + (h0 + i) * s_stride + at, n - at, acc[i]);
    }
  }
}

template <RadiusPrecision R>
void score_paper(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                 float* scores, size_t s_stride) {
  const PaperPage pg(tb, region);
  for (int h0 = 0; h0 < g; h0 += kHeadGroup) {
    with_count<1, kHeadGroup>(std::min(g - h0, kHeadGroup), [&](auto heads) {
      constexpr int G = decltype(heads)::value;
      if (tb.level1_half_turn) {
        score_paper_heads<R, G, true>(tb, pg, slot, n, h0, scores, s_stride);
      } else {
        score_paper_heads<R, G, false>(tb, pg, slot, n, h0, scores, s_stride);
      }
    });
  }
}

// V vectors of 8 slots from `first` (slots first + 8v .. first + 8v + 7; V = 1, 2 or 4), one
// level-1 pair (2 rotated coordinates) at a time: the pair's coordinates of every vector are
// decoded into registers (2V ymm), then each head's two lane accumulators are loaded, take V
// FMAs each, and are stored. The weights of the pass are copied once into `w` (masked: lanes past
// n weigh 0), so the FMAs read them as memory operands; the pair factors of a half block (levels
// 2-4, 4 per vector) are kept in `f`. Loads per half block of 32 slots and g = 4: 64 weights, 32
// accumulators, 16 factors (the previous order, all 8 coordinates of 4 vectors decoded first,
// spilled 32 vectors and read each back for every head: 128 loads more; docs/BENCHMARKS.md 2.5.5).
// The multiplications and the order of the FMAs per accumulator are the same as before.
template <RadiusPrecision R, int V, bool HalfTurn>
void value_paper_vectors(const PolarTables& tb, const PaperPage& pg, size_t first, int g,
                         const float* w, float* acc_lanes) {
  const int blocks = tb.dim >> 4;
  const size_t head_stride = static_cast<size_t>(tb.dim) * kLanes;  // one head's accumulators
  const float* cos1 = tb.cos[0].data();
  const float* sin1 = tb.sin[0].data();
  // Level 1's first 8 entries in registers (with the half turn they are the whole table).
  const __m256 cos8 = _mm256_loadu_ps(cos1), sin8 = _mm256_loadu_ps(sin1);
  for (int pb = 0; pb < 2 * blocks; ++pb) {
    __m256 f[V][4];
    for (int v = 0; v < V; ++v)
      pg.half_factors<R>(pb / 2, pb % 2, first + 16 * (v / 2), v % 2, f[v]);
    for (int k = 0; k < 4; ++k) {
      __m256 y[V][2];
      for (int v = 0; v < V; ++v) {
        const __m256i c = pg.codes1(4 * pb + k, first + 16 * (v / 2), v % 2);
        if constexpr (HalfTurn) {
          const __m256 fs = _mm256_xor_ps(f[v][k], sign_of_bit3(c));
          y[v][0] = _mm256_mul_ps(fs, _mm256_permutevar8x32_ps(cos8, c));
          y[v][1] = _mm256_mul_ps(fs, _mm256_permutevar8x32_ps(sin8, c));
        } else {
          const __m256 sel = select_bit3(c);
          y[v][0] = _mm256_mul_ps(f[v][k], lookup16(cos1, c, sel));
          y[v][1] = _mm256_mul_ps(f[v][k], lookup16(sin1, c, sel));
        }
      }
      accumulate_pair<V>(acc_lanes + (8 * pb + 2 * k) * kLanes, head_stride, w, g, y);
    }
  }
}

// The passes (value_passes in avx2_lanes.h) over the paper kernel.
template <RadiusPrecision R, bool HalfTurn>
void value_paper_turn(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                      const float* p, size_t p_stride, float* acc_lanes) {
  const PaperPage pg(tb, region);
  value_passes(slot, n, g, tb.dim, p, p_stride, acc_lanes,
               [&](auto vectors, size_t first, int gh, const float* w, float* acc) {
                 value_paper_vectors<R, decltype(vectors)::value, HalfTurn>(tb, pg, first, gh, w,
                                                                            acc);
               });
}

template <RadiusPrecision R>
void value_paper(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                 const float* p, size_t p_stride, float* acc_lanes) {
  if (tb.level1_half_turn) {
    value_paper_turn<R, true>(tb, region, slot, n, g, p, p_stride, acc_lanes);
  } else {
    value_paper_turn<R, false>(tb, region, slot, n, g, p, p_stride, acc_lanes);
  }
}

}  // namespace
}  // namespace polarquant

#pragma GCC pop_options

namespace polarquant {

bool avx2_score_paper(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                      float* scores, size_t s_stride) {
  if (!is_paper_allocation(tb)) return false;
  switch (tb.radius) {
    case RadiusPrecision::kFp16:
      score_paper<RadiusPrecision::kFp16>(tb, region, slot, n, g, scores, s_stride);
      break;
    case RadiusPrecision::kBf16:
      score_paper<RadiusPrecision::kBf16>(tb, region, slot, n, g, scores, s_stride);
      break;
    case RadiusPrecision::kFp32:
      score_paper<RadiusPrecision::kFp32>(tb, region, slot, n, g, scores, s_stride);
      break;
  }
  return true;
}

bool avx2_value_paper(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                      const float* p, size_t p_stride, float* acc) {
  if (!is_paper_allocation(tb)) return false;
  switch (tb.radius) {
    case RadiusPrecision::kFp16:
      value_paper<RadiusPrecision::kFp16>(tb, region, slot, n, g, p, p_stride, acc);
      break;
    case RadiusPrecision::kBf16:
      value_paper<RadiusPrecision::kBf16>(tb, region, slot, n, g, p, p_stride, acc);
      break;
    case RadiusPrecision::kFp32:
      value_paper<RadiusPrecision::kFp32>(tb, region, slot, n, g, p, p_stride, acc);
      break;
  }
  return true;
}

}  // namespace polarquant
#else
namespace polarquant {
bool avx2_score_paper(const PolarTables&, const uint8_t*, size_t, size_t, int, float*, size_t) {
  return false;
}
bool avx2_value_paper(const PolarTables&, const uint8_t*, size_t, size_t, int, const float*, size_t,
                      float*) {
  return false;
}
}  // namespace polarquant
#endif
