// The AVX-512 kernel set, part 2: scores and values over PolarQuant pages of any allocation (the
// arithmetic of the scalar twins in attention/kernels_scalar.cpp; docs/ARCHITECTURE.md, "CPU
// attention"); the paper allocation goes to attention_avx512_paper.cpp first. Tokens sit in SIMD
// lanes: 16 tokens of one code field per load. Built for AVX-512 through the target pragma (see
// attention_avx512_rows.cpp).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "attention/kernels.h"
#include "cpu/attention_avx512.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include "cpu/avx512_target_begin.h"

namespace polarquant {
namespace {

using namespace avx512;

// The codes of 16 consecutive slots (first a multiple of 16) of one field, one per 32-bit lane
// (layout: code_bit in cache/page_format.h). Interleaved widths: broadcast the group's 2b bytes,
// widen bytes to lanes, shift each lane to its code; bits above the code stay (the lookups ignore
// them: tables of <= 16 entries repeat). Other widths: slots 0-7 are the first 8b bits, slots 8-15
// start b bytes later; vpmultishiftqb pulls each code into its own byte, then a mask.
struct CodeUnpacker {
  int bits = 0;
  bool interleaved = false;
  __m512i shifts = _mm512_setzero_si512();
  __m128i multishift = _mm_setzero_si128();
  __m512i mask = _mm512_setzero_si512();

  CodeUnpacker() = default;
  CodeUnpacker(const PolarTables& tb, int level)
      : bits(tb.bits[level]), interleaved(interleaved_codes(tb.bits[level])) {
    shifts = _mm512_loadu_si512(tb.lane_shifts[level]);
    multishift = _mm_set1_epi64x(static_cast<long long>(tb.multishift[level]));
    mask = _mm512_set1_epi32((1 << bits) - 1);
  }

  __m512i operator()(const uint8_t* field, size_t first) const {
    const uint8_t* p = field + first / 8 * bits;
    if (interleaved) {
      __m128i bytes;
      switch (bits) {
        case 1: {
          uint16_t u;
          std::memcpy(&u, p, 2);
          bytes = _mm_set1_epi16(static_cast<short>(u));
          break;
        }
        case 2: {
          uint32_t u;
          std::memcpy(&u, p, 4);
          bytes = _mm_set1_epi32(static_cast<int>(u));
          break;
        }
        case 4: {
          uint64_t u;
          std::memcpy(&u, p, 8);
          bytes = _mm_set1_epi64x(static_cast<long long>(u));
          break;
        }
        default:
          return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      }
      return _mm512_srlv_epi32(_mm512_cvtepu8_epi32(bytes), shifts);
    }
    uint64_t lo, hi;
    std::memcpy(&lo, p, 8);
    std::memcpy(&hi, p + bits, 8);
    const __m128i bytes = _mm_multishift_epi64_epi8(
        multishift, _mm_set_epi64x(static_cast<long long>(hi), static_cast<long long>(lo)));
    return _mm512_and_si512(_mm512_cvtepu8_epi32(bytes), mask);
  }
};

inline __m512 lookup(const float* table, int bits, __m512i idx) {
  if (bits <= 4) return _mm512_permutexvar_ps(idx, _mm512_loadu_ps(table));
  if (bits == 5) {
    return _mm512_permutex2var_ps(_mm512_loadu_ps(table), idx, _mm512_loadu_ps(table + 16));
  }
  return _mm512_i32gather_ps(idx, table, 4);
}

inline __m512 load_radii(const PolarTables& tb, const uint8_t* region, int block, size_t first) {
  const PolarPageLayout& layout = *tb.layout;
  const uint8_t* p =
      region + layout.radii_offset +
      (static_cast<size_t>(block) * layout.page_tokens + first) * layout.radius_bytes;
  switch (tb.radius) {
    case RadiusPrecision::kFp16:
      return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    case RadiusPrecision::kBf16:
      return _mm512_castsi512_ps(_mm512_slli_epi32(
          _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
    case RadiusPrecision::kFp32:
      break;
  }
  return _mm512_loadu_ps(p);
}

constexpr int kMaxLevels = 8;  // deeper trees (blocks over 256 coordinates) use the scalar set

// Per-level unpackers and, for codes of <= 4 bits, the cos/sin tables held in registers.
template <int L>
struct Levels {
  CodeUnpacker unpack[L];
  int bits[L];
  __m512 cos[L], sin[L];
  const float* cos_table[L];
  const float* sin_table[L];
  explicit Levels(const PolarTables& tb) {
    for (int l = 0; l < L; ++l) {
      unpack[l] = CodeUnpacker(tb, l);
      bits[l] = tb.bits[l];
      cos_table[l] = tb.cos[l].data();
      sin_table[l] = tb.sin[l].data();
      cos[l] = _mm512_loadu_ps(cos_table[l]);
      sin[l] = _mm512_loadu_ps(sin_table[l]);
    }
  }
  __m512 cos_of(int l, __m512i c) const {
    return bits[l] <= 4 ? _mm512_permutexvar_ps(c, cos[l]) : lookup(cos_table[l], bits[l], c);
  }
  __m512 sin_of(int l, __m512i c) const {
    return bits[l] <= 4 ? _mm512_permutexvar_ps(c, sin[l]) : lookup(sin_table[l], bits[l], c);
  }
};

// Top-down decode of one block for 16 slots, from level Level down to level Stop; vals[k] holds
// node k of level Level on entry (the block radius when Level == L). The tree depth is a template
// parameter so that every index is a constant and the nodes stay in registers.
template <int Level, int Stop, int Count, typename LevelSet>
inline void descend(const LevelSet& lv, const PolarTables& tb, const uint8_t* region, int b,
                    size_t first, __m512* vals) {
  if constexpr (Level >= Stop) {
#pragma GCC unroll 128
    for (int k = Count - 1; k >= 0; --k) {
      const __m512i c =
          lv.unpack[Level - 1](tb.layout->level_field(region, Level, b * Count + k), first);
      const __m512 r = vals[k];
      vals[2 * k] = _mm512_mul_ps(r, lv.cos_of(Level - 1, c));
      vals[2 * k + 1] = _mm512_mul_ps(r, lv.sin_of(Level - 1, c));
    }
    descend<Level - 1, Stop, Count * 2, LevelSet>(lv, tb, region, b, first, vals);
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
    const __mmask16 keep = tail_mask(slot + n - first);
    for (int h0 = 0; h0 < g; h0 += kHeadGroup) {
      const int gh = g - h0 < kHeadGroup ? g - h0 : kHeadGroup;
      __m512 acc[kHeadGroup];
      for (int i = 0; i < kHeadGroup; ++i) acc[i] = _mm512_setzero_ps();
      for (int b = 0; b < blocks; ++b) {
        __m512 f[kHalf];
        f[0] = load_radii(tb, region, b, first);
        descend<L, 2, 1>(lv, tb, region, b, first, f);
#pragma GCC unroll 128
        for (int k = 0; k < kHalf; ++k) {
          const int pair = b * kHalf + k;
          const __m512i c = lv.unpack[0](tb.layout->level_field(region, 1, pair), first);
          const float* a1 = &tb.a1[(h0 * pairs + pair) * size1];
          for (int i = 0; i < gh; ++i) {
            acc[i] = _mm512_fmadd_ps(f[k], lookup(a1 + i * pairs * size1, tb.bits[0], c), acc[i]);
          }
        }
      }
      for (int i = 0; i < gh; ++i) {
        _mm512_mask_storeu_ps(scores + (h0 + i) * s_stride + (first - slot), keep, acc[i]);
      }
    }
  }
}

// Decodes the block for kGroups groups of 16 slots, then updates each lane accumulator once for
// all of them (one load and store of acc per kGroups x 16 tokens).
template <int L>
void value_polar_levels(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                        const float* p, size_t p_stride, float* acc_lanes) {
  constexpr int kBlock = 1 << L;
  constexpr int kGroups = L <= 4 ? 2 : 1;
  const Levels<L> lv(tb);
  const int blocks = tb.dim >> L;
  for (size_t first = slot; first < slot + n; first += 16 * kGroups) {
    const int groups = static_cast<int>(std::min<size_t>(kGroups, (slot + n - first + 15) / 16));
    for (int b = 0; b < blocks; ++b) {
      __m512 y[kGroups][kBlock];
      for (int k = 0; k < groups; ++k) {
        y[k][0] = load_radii(tb, region, b, first + 16 * k);
        descend<L, 1, 1>(lv, tb, region, b, first + 16 * k, y[k]);
      }
      if (groups < kGroups) {
        for (int j = 0; j < kBlock; ++j) y[kGroups - 1][j] = _mm512_setzero_ps();
      }
      for (int h = 0; h < g; ++h) {
        __m512 w[kGroups];
        for (int k = 0; k < kGroups; ++k) {
          const size_t at = first + 16 * k - slot;
          w[k] = k < groups ? _mm512_maskz_loadu_ps(tail_mask(n - at), p + h * p_stride + at)
                            : _mm512_setzero_ps();
        }
        float* acc = acc_lanes + (static_cast<size_t>(h) * tb.dim + b * kBlock) * 16;
#pragma GCC unroll 64
        for (int j = 0; j < kBlock; ++j) {
          __m512 a = _mm512_loadu_ps(acc + j * 16);
          for (int k = 0; k < kGroups; ++k) a = _mm512_fmadd_ps(w[k], y[k][j], a);
          _mm512_storeu_ps(acc + j * 16, a);
        }
      }
    }
  }
}

void score_polar(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                 float* scores, size_t s_stride) {
  if (avx512_score_paper(tb, region, slot, n, g, scores, s_stride)) return;
  const bool done = with_count<1, 8>(tb.levels, [&](auto levels) {
    score_polar_levels<decltype(levels)::value>(tb, region, slot, n, g, scores, s_stride);
  });
  if (!done) scalar_kernels().score_polar(tb, region, slot, n, g, scores, s_stride);
}

void value_polar(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                 const float* p, size_t p_stride, float* acc) {
  if (avx512_value_paper(tb, region, slot, n, g, p, p_stride, acc)) return;
  const bool done = with_count<1, 8>(tb.levels, [&](auto levels) {
    value_polar_levels<decltype(levels)::value>(tb, region, slot, n, g, p, p_stride, acc);
  });
  if (!done) scalar_kernels().value_polar(tb, region, slot, n, g, p, p_stride, acc);
}

}  // namespace
}  // namespace polarquant

#include "cpu/avx512_target_end.h"

namespace polarquant {
void avx512_polar_kernels(KernelSet& set) {
  set.score_polar = score_polar;
  set.value_polar = value_polar;
}
}  // namespace polarquant
#else
namespace polarquant {
void avx512_polar_kernels(KernelSet& set) {}
}  // namespace polarquant
#endif
