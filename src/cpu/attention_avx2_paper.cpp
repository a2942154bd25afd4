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

// V vectors of 8 slots from `first` (slots first + 8v .. first + 8v + 7; V = 1, 2 or 4) and the
// 8 rotated coordinates of a half block at a time: the coordinates of every vector are decoded,
// then each lane accumulator is loaded and stored once for all V vectors (the AVX2 accumulators
// have 8 lanes, which the two halves of a 16-slot group share). The 32 decoded vectors of V = 4
// exceed the 16 ymm registers; the spilled ones are read back by the FMAs from L1. Stage value,
// llama shape, one Zen 3 core (docs/BENCHMARKS.md 2.5.3): V = 2 per 16 slots: 161-163 us; V = 4
// over quarter blocks (radius and levels 4-3 decoded per quarter): 155-158 us; V = 4 over half
// blocks: 146-152 us.
template <RadiusPrecision R, int V, bool HalfTurn>
void value_paper_vectors(const PolarTables& tb, const PaperPage& pg, size_t slot, size_t n,
                         size_t first, int g, const float* p, size_t p_stride, float* acc_lanes) {
  constexpr int C = 8;  // coordinates per pass: a half block
  const int blocks = tb.dim >> 4;
  const float* cos1 = tb.cos[0].data();
  const float* sin1 = tb.sin[0].data();
  size_t at[V];
  __m256i keep[V];
  for (int v = 0; v < V; ++v) {
    at[v] = first + 8 * v - slot;
    keep[v] = lane_mask(at[v] < n ? n - at[v] : 0);
  }
  constexpr int kParts = 16 / C;  // passes per block
  for (int pb = 0; pb < kParts * blocks; ++pb) {
    const int b = pb / kParts, part = pb % kParts;
    __m256 y[V][C];
    for (int v = 0; v < V; ++v) {
      const size_t group = first + 16 * (v / 2);
      const int half = v % 2;
      __m256 f[C / 2];
      pg.half_factors<R>(b, part, group, half, f);
      for (int j = 0; j < C / 2; ++j) {
        const __m256i c = pg.codes1(C / 2 * pb + j, group, half);
        if constexpr (HalfTurn) {
          const __m256 fs = _mm256_xor_ps(f[j], sign_of_bit3(c));
          y[v][2 * j] = _mm256_mul_ps(fs, PaperPage::perm(cos1, c));
          y[v][2 * j + 1] = _mm256_mul_ps(fs, PaperPage::perm(sin1, c));
        } else {
          const __m256 sel = select_bit3(c);
          y[v][2 * j] = _mm256_mul_ps(f[j], lookup16(cos1, c, sel));
          y[v][2 * j + 1] = _mm256_mul_ps(f[j], lookup16(sin1, c, sel));
        }
      }
    }
    for (int h = 0; h < g; ++h) {
      __m256 w[V];
      for (int v = 0; v < V; ++v) w[v] = _mm256_maskload_ps(p + h * p_stride + at[v], keep[v]);
      float* acc = acc_lanes + (static_cast<size_t>(h) * tb.dim + pb * C) * kLanes;
#pragma GCC unroll 8
      for (int j = 0; j < C; ++j) {
        __m256 a = _mm256_loadu_ps(acc + j * kLanes);
        for (int v = 0; v < V; ++v) a = _mm256_fmadd_ps(w[v], y[v][j], a);
        _mm256_storeu_ps(acc + j * kLanes, a);
      }
    }
  }
}

// 32 slots per pass while more than 16 remain (the second group may be partial: its lanes past n
// get weight 0, and its codes lie inside the page, whose token count is a multiple of 16).
template <RadiusPrecision R, bool HalfTurn>
void value_paper_turn(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                      const float* p, size_t p_stride, float* acc_lanes) {
  const PaperPage pg(tb, region);
  size_t first = slot;
  for (; first + 16 < slot + n; first += 32) {
    value_paper_vectors<R, 4, HalfTurn>(tb, pg, slot, n, first, g, p, p_stride, acc_lanes);
  }
  if (first + 8 < slot + n) {
    value_paper_vectors<R, 2, HalfTurn>(tb, pg, slot, n, first, g, p, p_stride, acc_lanes);
  } else if (first < slot + n) {
    value_paper_vectors<R, 1, HalfTurn>(tb, pg, slot, n, first, g, p, p_stride, acc_lanes);
  }
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
  if (!avx2::is_paper_allocation(tb)) return false;
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
  if (!avx2::is_paper_allocation(tb)) return false;
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
