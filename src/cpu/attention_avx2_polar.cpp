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

constexpr int kMaxLevels = 8;  // deeper trees use the scalar set

// ---- Any allocation of up to kMaxLevels levels ------------------------------------------------

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

// Top-down decode of one block for 8 slots, from level Level down to level Stop; vals[k] holds
// node k of level Level on entry.
template <int Level, int Stop, int Count, typename LevelSet>
inline void descend(const LevelSet& lv, const PolarTables& tb, const uint8_t* region, int b,
                    size_t first, int half, __m256* vals) {
  if constexpr (Level >= Stop) {
#pragma GCC unroll 128
    for (int k = Count - 1; k >= 0; --k) {
      const __m256i c =
          lv.unpack[Level - 1](tb.layout->level_field(region, Level, b * Count + k), first, half);
      const __m256 r = vals[k];
      vals[2 * k] = _mm256_mul_ps(r, lookup(lv.cos[Level - 1], lv.bits[Level - 1], c));
      vals[2 * k + 1] = _mm256_mul_ps(r, lookup(lv.sin[Level - 1], lv.bits[Level - 1], c));
    }
    descend<Level - 1, Stop, Count * 2, LevelSet>(lv, tb, region, b, first, half, vals);
  }
}

template <int L>
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
          descend<L, 2, 1>(lv, tb, region, b, first, half, f);
          for (int k = 0; k < kHalf; ++k) {
            const int pair = b * kHalf + k;
            const __m256i c = lv.unpack[0](tb.layout->level_field(region, 1, pair), first, half);
            const float* a1 = &tb.a1[(h0 * pairs + pair) * size1];
            for (int i = 0; i < gh; ++i) {
              acc[i] = _mm256_fmadd_ps(f[k], lookup(a1 + i * pairs * size1, tb.bits[0], c), acc[i]);
            }
          }
        }
        for (int i = 0; i < gh; ++i)
          store_scores(scores + (h0 + i) * s_stride + at, n - at, acc[i]);
      }
    }
  }
}

template <int L>
void value_polar_levels(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                        const float* p, size_t p_stride, float* acc_lanes) {
  constexpr int kBlock = 1 << L;
  const Levels<L> lv(tb);
  const int blocks = tb.dim >> L;
  for (size_t first = slot; first < slot + n; first += 16) {
    for (int half = 0; half < 2; ++half) {
      const size_t at = first + 8 * half - slot;
      if (at >= n) break;
      const __m256i keep = lane_mask(n - at);
      for (int b = 0; b < blocks; ++b) {
        __m256 y[kBlock];
        y[0] = load_radii(*tb.layout, tb.radius, region, b, first + 8 * half);
        descend<L, 1, 1>(lv, tb, region, b, first, half, y);
        for (int h = 0; h < g; ++h) {
          const __m256 w = _mm256_maskload_ps(p + h * p_stride + at, keep);
          float* acc = acc_lanes + (static_cast<size_t>(h) * tb.dim + b * kBlock) * kLanes;
          for (int j = 0; j < kBlock; ++j) {
            _mm256_storeu_ps(acc + j * kLanes,
                             _mm256_fmadd_ps(w, y[j], _mm256_loadu_ps(acc + j * kLanes)));
          }
        }
      }
    }
  }
}

void score_polar(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                 float* scores, size_t s_stride) {
  if (avx2_score_paper_i8(tb, region, slot, n, g, scores, s_stride)) return;
  if (avx2_score_paper(tb, region, slot, n, g, scores, s_stride)) return;
  const bool done = with_count<1, kMaxLevels>(tb.levels, [&](auto levels) {
    score_polar_levels<decltype(levels)::value>(tb, region, slot, n, g, scores, s_stride);
  });
  if (!done) scalar_kernels().score_polar(tb, region, slot, n, g, scores, s_stride);
}

void value_polar(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                 const float* p, size_t p_stride, float* acc) {
  if (avx2_value_paper(tb, region, slot, n, g, p, p_stride, acc)) return;
  const bool done = with_count<1, kMaxLevels>(tb.levels, [&](auto levels) {
    value_polar_levels<decltype(levels)::value>(tb, region, slot, n, g, p, p_stride, acc);
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
}
}  // namespace polarquant
#else
namespace polarquant {
void avx2_polar_kernels(KernelSet& set) {}
}  // namespace polarquant
#endif
