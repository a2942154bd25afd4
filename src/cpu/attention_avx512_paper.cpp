// The AVX-512 kernels for the paper allocation (L = 4, bits 4,2,2,2): the arithmetic of the
// generic AVX-512 kernels at L = 4 (attention_avx512_polar.cpp) with every code width and head
// count known at compile time. Built for AVX-512 through the target pragma (see
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

// ---- The paper allocation: L = 4, bits 4,2,2,2 -------------------------------------------------
// The same arithmetic as score_polar_levels<4> / value_polar_levels<4>, with every code width and
// head count known at compile time: no per-node width switches, the head accumulators and the
// cos/sin tables in registers, and codes unpacked by one vpmultishiftqb per field (the generic
// path widens bytes to lanes and then shifts each lane: two vector uops). vpermps reads only the
// low 4 bits of each lane, so the bits the multishift leaves above a code do not matter (2-bit
// tables repeat with period 4, see build_polar_tables).

// vpmultishiftqb control putting slot i's code at the bottom of lane i, for a field group of 16
// b-bit codes broadcast to every 64-bit lane (b = 4: the group's 8 bytes; b = 2: its 4 bytes,
// twice).
inline __m512i code_select(int bits) {
  alignas(64) uint32_t ctrl[16];
  for (int i = 0; i < 16; ++i) ctrl[i] = static_cast<uint32_t>(code_bit(i, bits));
  return _mm512_load_si512(ctrl);
}

struct PaperPage {
  const uint8_t* radii;     // block b, slot s at radii + b * radius_stride + s * radius bytes
  const uint8_t* level[4];  // level l + 1, node n at level[l] + n * field[l]
  size_t radius_stride;
  size_t field[4];
  __m512i select4, select2;
  __m512 cos2, sin2, cos3, sin3, cos4, sin4;

  PaperPage(const PolarTables& tb, const uint8_t* region) {
    const PolarPageLayout& layout = *tb.layout;
    radii = region + layout.radii_offset;
    radius_stride = static_cast<size_t>(layout.page_tokens) * layout.radius_bytes;
    for (int l = 0; l < 4; ++l) {
      level[l] = region + layout.level_offset[l];
      field[l] = layout.field_bytes[l];
    }
    select4 = code_select(4);
    select2 = code_select(2);
    cos2 = _mm512_loadu_ps(tb.cos[1].data());
    sin2 = _mm512_loadu_ps(tb.sin[1].data());
    cos3 = _mm512_loadu_ps(tb.cos[2].data());
    sin3 = _mm512_loadu_ps(tb.sin[2].data());
    cos4 = _mm512_loadu_ps(tb.cos[3].data());
    sin4 = _mm512_loadu_ps(tb.sin[3].data());
  }

  // Codes of 16 slots starting at `first` (a multiple of 16) of node `node` of level 1 (4 bits)
  // or of levels 2-4 (2 bits).
  __m512i codes1(int node, size_t first) const {
    uint64_t u;
    std::memcpy(&u, level[0] + node * field[0] + first / 2, 8);
    return _mm512_multishift_epi64_epi8(select4, _mm512_set1_epi64(static_cast<long long>(u)));
  }
  __m512i codes2(int l, int node, size_t first) const {
    uint32_t u;
    std::memcpy(&u, level[l - 1] + node * field[l - 1] + first / 4, 4);
    return _mm512_multishift_epi64_epi8(select2, _mm512_set1_epi32(static_cast<int>(u)));
  }

  template <RadiusPrecision R>
  __m512 radius(int block, size_t first) const {
    const uint8_t* p = radii + block * radius_stride + first * radius_bytes(R);
    if constexpr (R == RadiusPrecision::kFp16) {
      return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    } else if constexpr (R == RadiusPrecision::kBf16) {
      return _mm512_castsi512_ps(_mm512_slli_epi32(
          _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
    } else {
      return _mm512_loadu_ps(p);
    }
  }

  // The 4 level-1 pair factors of half `half` (0 or 1) of block b.
  template <RadiusPrecision R>
  void half_factors(int b, int half, size_t first, __m512* f) const {
    const __m512 r = radius<R>(b, first);
    const __m512i c4 = codes2(4, b, first);
    const __m512 v4 = _mm512_mul_ps(r, _mm512_permutexvar_ps(c4, half ? sin4 : cos4));
    const __m512i c3 = codes2(3, 2 * b + half, first);
    const __m512 v3[2] = {_mm512_mul_ps(v4, _mm512_permutexvar_ps(c3, cos3)),
                          _mm512_mul_ps(v4, _mm512_permutexvar_ps(c3, sin3))};
    for (int k = 0; k < 2; ++k) {
      const __m512i c = codes2(2, 4 * b + 2 * half + k, first);
      f[2 * k] = _mm512_mul_ps(v3[k], _mm512_permutexvar_ps(c, cos2));
      f[2 * k + 1] = _mm512_mul_ps(v3[k], _mm512_permutexvar_ps(c, sin2));
    }
  }

  // The 8 level-1 pair factors of block b (levels 4, 3, 2 walked top-down).
  template <RadiusPrecision R>
  void pair_factors(int b, size_t first, __m512* f) const {
    const __m512 r = radius<R>(b, first);
    const __m512i c4 = codes2(4, b, first);
    const __m512 v4[2] = {_mm512_mul_ps(r, _mm512_permutexvar_ps(c4, cos4)),
                          _mm512_mul_ps(r, _mm512_permutexvar_ps(c4, sin4))};
    __m512 v3[4];
    for (int k = 0; k < 2; ++k) {
      const __m512i c = codes2(3, 2 * b + k, first);
      v3[2 * k] = _mm512_mul_ps(v4[k], _mm512_permutexvar_ps(c, cos3));
      v3[2 * k + 1] = _mm512_mul_ps(v4[k], _mm512_permutexvar_ps(c, sin3));
    }
    for (int k = 0; k < 4; ++k) {
      const __m512i c = codes2(2, 4 * b + k, first);
      f[2 * k] = _mm512_mul_ps(v3[k], _mm512_permutexvar_ps(c, cos2));
      f[2 * k + 1] = _mm512_mul_ps(v3[k], _mm512_permutexvar_ps(c, sin2));
    }
  }
};

// G query heads (h0 .. h0 + G - 1) over slots [slot, slot + n).
template <RadiusPrecision R, int G>
void score_paper_heads(const PolarTables& tb, const PaperPage& pg, size_t slot, size_t n, int h0,
                       float* scores, size_t s_stride) {
  const int blocks = tb.dim >> 4;
  const size_t pairs = static_cast<size_t>(tb.dim / 2);
  const float* a1 = tb.a1.data() + h0 * pairs * 16;
  for (size_t first = slot; first < slot + n; first += 16) {
    __m512 acc[G];
    for (int i = 0; i < G; ++i) acc[i] = _mm512_setzero_ps();
    for (int b = 0; b < blocks; ++b) {
      __m512 f[8];
      pg.pair_factors<R>(b, first, f);
#pragma GCC unroll 8
      for (int k = 0; k < 8; ++k) {
        const int pair = 8 * b + k;
        const __m512i c = pg.codes1(pair, first);
#pragma GCC unroll 8
        for (int i = 0; i < G; ++i) {
          const __m512 a = _mm512_permutexvar_ps(c, _mm512_loadu_ps(a1 + (i * pairs + pair) * 16));
          acc[i] = _mm512_fmadd_ps(f[k], a, acc[i]);
        }
      }
    }
    const __mmask16 keep = tail_mask(slot + n - first);
    for (int i = 0; i < G; ++i) {
      _mm512_mask_storeu_ps(scores + (h0 + i) * s_stride + (first - slot), keep, acc[i]);
    }
  }
}

template <RadiusPrecision R>
void score_paper(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                 float* scores, size_t s_stride) {
  const PaperPage pg(tb, region);
  for (int h0 = 0; h0 < g; h0 += kHeadGroup) {
    with_count<1, kHeadGroup>(std::min(g - h0, kHeadGroup), [&](auto heads) {
      score_paper_heads<R, decltype(heads)::value>(tb, pg, slot, n, h0, scores, s_stride);
    });
  }
}

// K groups of 16 slots from `first` (K = 1 or 2), one half block (8 coordinates) at a time: the
// 8 rotated coordinates of each group are decoded into registers (the radius and the level-4 node
// are decoded again for the second half: 5 uops, against 16 coordinates spilled per block when a
// whole block is decoded: measured 93 against 88 us), then each lane accumulator is loaded and
// stored once for all K groups (K = 1 instead of 2: 125-140 us).
template <RadiusPrecision R, int K>
void value_paper_groups(const PolarTables& tb, const PaperPage& pg, size_t slot, size_t n,
                        size_t first, int g, const float* p, size_t p_stride, float* acc_lanes) {
  const int blocks = tb.dim >> 4;
  const __m512 cos1 = _mm512_loadu_ps(tb.cos[0].data());
  const __m512 sin1 = _mm512_loadu_ps(tb.sin[0].data());
  for (int half = 0; half < 2 * blocks; ++half) {
    const int b = half / 2;
    __m512 y[K][8];
    for (int k = 0; k < K; ++k) {
      __m512 f[4];
      pg.half_factors<R>(b, half % 2, first + 16 * k, f);
      for (int j = 0; j < 4; ++j) {
        const __m512i c = pg.codes1(4 * half + j, first + 16 * k);
        y[k][2 * j] = _mm512_mul_ps(f[j], _mm512_permutexvar_ps(c, cos1));
        y[k][2 * j + 1] = _mm512_mul_ps(f[j], _mm512_permutexvar_ps(c, sin1));
      }
    }
    for (int h = 0; h < g; ++h) {
      __m512 w[K];
      for (int k = 0; k < K; ++k) {
        const size_t at = first + 16 * k - slot;
        w[k] = _mm512_maskz_loadu_ps(tail_mask(n - at), p + h * p_stride + at);
      }
      float* acc = acc_lanes + (static_cast<size_t>(h) * tb.dim + half * 8) * 16;
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) {
        __m512 a = _mm512_loadu_ps(acc + j * 16);
        for (int k = 0; k < K; ++k) a = _mm512_fmadd_ps(w[k], y[k][j], a);
        _mm512_storeu_ps(acc + j * 16, a);
      }
    }
  }
}

template <RadiusPrecision R>
void value_paper(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                 const float* p, size_t p_stride, float* acc_lanes) {
  const PaperPage pg(tb, region);
  size_t first = slot;
  for (; first + 16 < slot + n; first += 32) {
    value_paper_groups<R, 2>(tb, pg, slot, n, first, g, p, p_stride, acc_lanes);
  }
  if (first < slot + n) value_paper_groups<R, 1>(tb, pg, slot, n, first, g, p, p_stride, acc_lanes);
}

}  // namespace

bool avx512_score_paper(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
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

bool avx512_value_paper(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
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

#include "cpu/avx512_target_end.h"
#else
namespace polarquant {
bool avx512_score_paper(const PolarTables&, const uint8_t*, size_t, size_t, int, float*, size_t) {
  return false;
}
bool avx512_value_paper(const PolarTables&, const uint8_t*, size_t, size_t, int, const float*,
                        size_t, float*) {
  return false;
}
}  // namespace polarquant
#endif
