// The AVX2 kernel set, part 2: scores and values over PolarQuant pages (the arithmetic of the
// scalar twins in attention/kernels_scalar.cpp; docs/ARCHITECTURE.md, "CPU attention"). As in the
// AVX-512 set, tokens sit in SIMD lanes: a 16-slot code group is two halves of 8 lanes, and the
// value lane accumulators (16 per coordinate) take lanes 0-7 from the first half, 8-15 from the
// second. AVX2 has no 16-entry permute and no vpmultishiftqb, so:
//  - a 16-entry table (4-bit codes) is two 8-entry vpermps and a blend on bit 3 of the code;
//    tables of <= 8 distinct entries (1-3 bit codes; build_polar_tables repeats shorter codebooks)
//    take one vpermps, which reads only the low 3 bits of each lane; wider codes are gathered;
//  - codes are unpacked per width: a broadcast and a per-lane shift (1- and 2-bit groups), a byte
//    widening (4 and 8 bits), two 64-bit shifts and a lane shuffle (packed 3, 5, 6, 7 bits).
// Built for AVX2 through the target pragma (see attention_avx2_rows.cpp for why not -mavx2).
#include <algorithm>
#include <cstdint>

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

template <int L, int B1, int BU, bool HalfTurn>
void score_polar_levels(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                        float* scores, size_t s_stride) {
  constexpr int kHalf = 1 << (L - 1);  // level-1 pairs per block
  const Levels<L> lv(tb);
  const int blocks = tb.dim >> L;
  const int size1 = PolarTables::table_size(tb.bits[0]);
  const size_t pairs = static_cast<size_t>(tb.dim / 2);
  for (size_t first = slot; first < slot + n; first += 16) {
    for (int half = 0; half < 2; ++half) {
      const size_t at = first + 8 * half - slot;
      if (at >= n) break;
      for (int h0 = 0; h0 < g; h0 += kHeadGroup) {
        const int gh = std::min(g - h0, kHeadGroup);
        __m256 acc[kHeadGroup];
        for (int i = 0; i < kHeadGroup; ++i) acc[i] = _mm256_setzero_ps();
        for (int b = 0; b < blocks; ++b) {
          __m256 f[kHalf];
          f[0] = load_radii(*tb.layout, tb.radius, region, b, first + 8 * half);
          descend<L, 2, 1, B1, BU>(lv, tb, region, b, first, half, f);
          for (int k = 0; k < kHalf; ++k) {
            const int pair = b * kHalf + k;
            const __m256i c = lv.unpack[0].template unpack<B1>(
                tb.layout->level_field(region, 1, pair), first, half);
            const float* a1 = &tb.a1[(h0 * pairs + pair) * size1];
            if constexpr (HalfTurn) {  // the sign goes into the factor, shared by the heads
              const __m256 fs = _mm256_xor_ps(f[k], half_turn_sign<B1>(c));
              for (int i = 0; i < gh; ++i) {
                acc[i] =
                    _mm256_fmadd_ps(fs, half_turn_lookup<B1>(a1 + i * pairs * size1, c), acc[i]);
              }
            } else {
              for (int i = 0; i < gh; ++i) {
                acc[i] = _mm256_fmadd_ps(f[k], lookup<B1>(a1 + i * pairs * size1, tb.bits[0], c),
                                         acc[i]);
              }
            }
          }
        }
        for (int i = 0; i < gh; ++i)
          store_scores(scores + (h0 + i) * s_stride + at, n - at, acc[i]);
      }
    }
  }
}

// V vectors of 8 slots from `first` (slots first + 8v .. first + 8v + 7; V = 1, 2 or 4), gh heads
// whose masked weights of the pass are in w (gh x V x 8 floats, lanes past n 0). Per block:
// levels L..2 of every vector decoded into its level-1 pair factors f (kept on the stack), then one
// level-1 pair at a time: its 2 coordinates of the V vectors decoded into registers, and each
// head's two lane accumulators loaded, given V FMAs each and stored (the order of `paper`'s AVX2
// value kernel, docs/BENCHMARKS.md 2.5.5; the products and the FMA order per lane are those of
// the scalar twin).
template <int L, int B1, int BU, bool HalfTurn, int V>
void value_polar_vectors(const PolarTables& tb, const Levels<L>& lv, const uint8_t* region,
                         size_t first, int gh, const float* w, float* acc_lanes) {
  constexpr int kHalf = 1 << (L - 1);
  const int blocks = tb.dim >> L;
  const size_t head_stride = static_cast<size_t>(tb.dim) * kLanes;  // one head's accumulators
  for (int b = 0; b < blocks; ++b) {
    __m256 f[V][kHalf];
    for (int v = 0; v < V; ++v) {
      const size_t group = first + 16 * (v / 2);
      f[v][0] = load_radii(*tb.layout, tb.radius, region, b, group + 8 * (v % 2));
      descend<L, 2, 1, B1, BU>(lv, tb, region, b, group, v % 2, f[v]);
    }
    for (int k = 0; k < kHalf; ++k) {
      const uint8_t* field = tb.layout->level_field(region, 1, b * kHalf + k);
      __m256 y[V][2];
      for (int v = 0; v < V; ++v) {
        const __m256i c = lv.unpack[0].template unpack<B1>(field, first + 16 * (v / 2), v % 2);
        if constexpr (HalfTurn) {
          const __m256 fs = _mm256_xor_ps(f[v][k], half_turn_sign<B1>(c));
          y[v][0] = _mm256_mul_ps(fs, half_turn_lookup<B1>(lv.cos[0], c));
          y[v][1] = _mm256_mul_ps(fs, half_turn_lookup<B1>(lv.sin[0], c));
        } else {
          y[v][0] = _mm256_mul_ps(f[v][k], lookup<B1>(lv.cos[0], lv.bits[0], c));
          y[v][1] = _mm256_mul_ps(f[v][k], lookup<B1>(lv.sin[0], lv.bits[0], c));
        }
      }
      accumulate_pair<V>(acc_lanes + (static_cast<size_t>(b) * 2 * kHalf + 2 * k) * kLanes,
                         head_stride, w, gh, y);
    }
  }
}

// The passes (value_passes in avx2_lanes.h) over the generic kernel.
template <int L, int B1, int BU, bool HalfTurn>
void value_polar_levels(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                        const float* p, size_t p_stride, float* acc_lanes) {
  const Levels<L> lv(tb);
  value_passes(slot, n, g, tb.dim, p, p_stride, acc_lanes,
               [&](auto vectors, size_t first, int gh, const float* w, float* acc) {
                 value_polar_vectors<L, B1, BU, HalfTurn, decltype(vectors)::value>(
                     tb, lv, region, first, gh, w, acc);
               });
}

void score_polar(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                 float* scores, size_t s_stride) {
  if (avx2_score_paper_i8(tb, region, slot, n, g, scores, s_stride)) return;
  if (avx2_score_paper(tb, region, slot, n, g, scores, s_stride)) return;
  if (avx2_score_polar_i8(tb, region, slot, n, g, scores, s_stride)) return;
  const bool done = with_widths(tb, [&](auto l, auto b1, auto bu) {
    constexpr int L = decltype(l)::value, B1 = decltype(b1)::value, BU = decltype(bu)::value;
    if constexpr (B1 == 4 || B1 == 5) {
      if (tb.level1_half_turn) {
        score_polar_levels<L, B1, BU, true>(tb, region, slot, n, g, scores, s_stride);
        return;
      }
    }
    score_polar_levels<L, B1, BU, false>(tb, region, slot, n, g, scores, s_stride);
  });
  if (!done) scalar_kernels().score_polar(tb, region, slot, n, g, scores, s_stride);
}

void value_polar(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                 const float* p, size_t p_stride, float* acc) {
  if (avx2_value_paper(tb, region, slot, n, g, p, p_stride, acc)) return;
  const bool done = with_widths(tb, [&](auto l, auto b1, auto bu) {
    constexpr int L = decltype(l)::value, B1 = decltype(b1)::value, BU = decltype(bu)::value;
    if constexpr (B1 == 4 || B1 == 5) {
      if (tb.level1_half_turn) {
        value_polar_levels<L, B1, BU, true>(tb, region, slot, n, g, p, p_stride, acc);
        return;
      }
    }
    value_polar_levels<L, B1, BU, false>(tb, region, slot, n, g, p, p_stride, acc);
  });
  if (!done) scalar_value_polar(tb, region, slot, n, g, p, p_stride, acc, kLanes);
}
}  // namespace
}  // namespace polarquant

#pragma GCC pop_options

namespace polarquant {
void avx2_polar_kernels(KernelSet& set) {
  set.score_polar = score_polar;
  set.value_polar = value_polar;
  set.value_lanes = kLanes;
  set.int8_score_tables = true;  // attention_avx2_{paper,polar}_i8.cpp
}
}  // namespace polarquant
#else
namespace polarquant {
void avx2_polar_kernels(KernelSet& set) {}
}  // namespace polarquant
#endif
