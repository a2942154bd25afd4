// The paper allocation's page access for the AVX2 kernels (L = 4, bits 4,2,2,2; widths known at
// compile time): attention_avx2_paper.cpp (float kernels) and attention_avx2_paper_i8.cpp (integer
// scores). Include only after `#pragma GCC target("avx2,fma,f16c")`, <immintrin.h> and
// cpu/avx2_lanes.h, at file scope.
#pragma once

#include <cstdint>
#include <cstring>

#include "attention/kernels.h"
#include "cache/page_format.h"

namespace polarquant::avx2 {

struct PaperPage {
  const uint8_t* radii;
  const uint8_t* level[4];  // level l + 1, node n at level[l] + n * field[l]
  size_t radius_stride;
  size_t field[4];
  const float* cos[4];
  const float* sin[4];
  __m256i shifts2[2];  // 2-bit groups: per-lane shift of the broadcast 4 bytes, per half

  PaperPage(const PolarTables& tb, const uint8_t* region) {
    const PolarPageLayout& layout = *tb.layout;
    radii = region + layout.radii_offset;
    radius_stride = static_cast<size_t>(layout.page_tokens) * layout.radius_bytes;
    for (int l = 0; l < 4; ++l) {
      level[l] = region + layout.level_offset[l];
      field[l] = layout.field_bytes[l];
      cos[l] = tb.cos[l].data();
      sin[l] = tb.sin[l].data();
    }
    const CodeUnpacker two(2);
    shifts2[0] = two.shifts[0];
    shifts2[1] = two.shifts[1];
  }

  __m256i codes1(int node, size_t first, int half) const {
    const __m256i v = _mm256_cvtepu8_epi32(
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(level[0] + node * field[0] + first / 2)));
    return half ? _mm256_srli_epi32(v, 4) : v;
  }
  __m256i codes2(int l, int node, size_t first, int half) const {
    uint32_t u;
    std::memcpy(&u, level[l - 1] + node * field[l - 1] + first / 4, 4);
    return _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(u)), shifts2[half]);
  }
  static __m256 perm(const float* table, __m256i c) {
    return _mm256_permutevar8x32_ps(_mm256_loadu_ps(table), c);
  }

  template <RadiusPrecision R>
  __m256 radius(int block, size_t first) const {
    const uint8_t* p = radii + block * radius_stride + first * radius_bytes(R);
    if constexpr (R == RadiusPrecision::kFp16) {
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    } else if constexpr (R == RadiusPrecision::kBf16) {
      return _mm256_castsi256_ps(_mm256_slli_epi32(
          _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
    } else {
      return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
    }
  }

  // The 4 level-1 pair factors of half block `hb` (0 or 1) of block b, 8 slots; with `scale`, of
  // the radius times *scale (multiplied first).
  template <RadiusPrecision R>
  void half_factors(int b, int hb, size_t first, int half, __m256* f,
                    const __m256* scale = nullptr) const {
    __m256 r = radius<R>(b, first + 8 * half);
    if (scale != nullptr) r = _mm256_mul_ps(r, *scale);
    const __m256i c4 = codes2(4, b, first, half);
    const __m256 v4 = _mm256_mul_ps(r, lookup4(hb ? sin[3] : cos[3], c4));
    const __m256i c3 = codes2(3, 2 * b + hb, first, half);
    const __m256 v3[2] = {_mm256_mul_ps(v4, lookup4(cos[2], c3)),
                          _mm256_mul_ps(v4, lookup4(sin[2], c3))};
    for (int k = 0; k < 2; ++k) {
      const __m256i c = codes2(2, 4 * b + 2 * hb + k, first, half);
      f[2 * k] = _mm256_mul_ps(v3[k], lookup4(cos[1], c));
      f[2 * k + 1] = _mm256_mul_ps(v3[k], lookup4(sin[1], c));
    }
  }
};

}  // namespace polarquant::avx2
