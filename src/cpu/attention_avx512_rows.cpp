// The AVX-512 kernel set (F, BW, DQ, VL, VBMI), part 1: the fp32/fp16 row kernels, the softmax
// step and the set itself. The PolarQuant kernels are in attention_avx512_polar.cpp and, for the
// paper allocation, attention_avx512_paper.cpp. Only these three files are compiled for AVX-512
// (through the target pragma below, after every standard header, so no inline library code is
// built for it; attention_avx2_rows.cpp says why not -mavx512f); the set is used only when the CPU
// reports all five features. Tokens sit in SIMD lanes for the PolarQuant kernels (16 tokens of one
// code field per load), coordinates for the row kernels.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

#include "attention/kernels.h"
#include "cpu/attention_avx512.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include "cpu/avx512_target_begin.h"

namespace polarquant {
namespace {

using namespace avx512;

struct F32Rows {
  static __m512 load(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
};
struct F16Rows {
  static __m512 load(const uint16_t* p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
};

// scores[h][t] = q[h] . row_t; 4 tokens x up to 4 heads of accumulators per pass, rows read once
// per pass and converted once per pass.
template <typename Loader, typename T>
void score_rows(const float* q, int g, int dim, const T* rows, size_t stride, size_t n,
                float* scores, size_t s_stride) {
  for (size_t t0 = 0; t0 < n; t0 += 4) {
    const int nt = static_cast<int>(n - t0 < 4 ? n - t0 : 4);
    const T* r[4];
    for (int i = 0; i < 4; ++i) r[i] = rows + (t0 + (i < nt ? i : 0)) * stride;
    for (int h0 = 0; h0 < g; h0 += 4) {
      const int gh = g - h0 < 4 ? g - h0 : 4;
      __m512 acc[4][4];
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) acc[a][b] = _mm512_setzero_ps();
      for (int j = 0; j < dim; j += 16) {
        const __mmask16 m = tail_mask(static_cast<size_t>(dim - j));
        __m512 x[4];
        for (int i = 0; i < 4; ++i) x[i] = Loader::load(r[i] + j, m);
        for (int hh = 0; hh < 4; ++hh) {
          if (hh >= gh) break;
          const __m512 qv = _mm512_maskz_loadu_ps(m, q + (h0 + hh) * dim + j);
          for (int i = 0; i < 4; ++i) acc[hh][i] = _mm512_fmadd_ps(qv, x[i], acc[hh][i]);
        }
      }
      for (int hh = 0; hh < gh; ++hh)
        for (int i = 0; i < nt; ++i)
          scores[(h0 + hh) * s_stride + t0 + i] = _mm512_reduce_add_ps(acc[hh][i]);
    }
  }
}

// acc[h] += sum_t p[h][t] row_t; 4 tokens per pass so each accumulator is loaded and stored once
// per 4 tokens, and each row chunk converted once for all heads.
template <typename Loader, typename T>
void value_rows(const float* p, size_t p_stride, int g, int dim, const T* rows, size_t stride,
                size_t n, float* acc) {
  for (size_t t0 = 0; t0 < n; t0 += 4) {
    const int nt = static_cast<int>(n - t0 < 4 ? n - t0 : 4);
    const T* r[4];
    for (int i = 0; i < 4; ++i) r[i] = rows + (t0 + (i < nt ? i : 0)) * stride;
    for (int j = 0; j < dim; j += 16) {
      const __mmask16 m = tail_mask(static_cast<size_t>(dim - j));
      __m512 x[4];
      for (int i = 0; i < 4; ++i) {
        x[i] = i < nt ? Loader::load(r[i] + j, m) : _mm512_setzero_ps();
      }
      for (int h = 0; h < g; ++h) {
        const float* ph = p + h * p_stride + t0;
        __m512 a = _mm512_maskz_loadu_ps(m, acc + h * dim + j);
        for (int i = 0; i < nt; ++i) a = _mm512_fmadd_ps(_mm512_set1_ps(ph[i]), x[i], a);
        _mm512_mask_storeu_ps(acc + h * dim + j, m, a);
      }
    }
  }
}

void score_f32(const float* q, int g, int dim, const float* rows, size_t stride, size_t n,
               float* scores, size_t s_stride) {
  score_rows<F32Rows>(q, g, dim, rows, stride, n, scores, s_stride);
}
void score_f16(const float* q, int g, int dim, const uint16_t* rows, size_t stride, size_t n,
               float* scores, size_t s_stride) {
  score_rows<F16Rows>(q, g, dim, rows, stride, n, scores, s_stride);
}
void value_f32(const float* p, size_t p_stride, int g, int dim, const float* rows, size_t stride,
               size_t n, float* acc) {
  value_rows<F32Rows>(p, p_stride, g, dim, rows, stride, n, acc);
}
void value_f16(const float* p, size_t p_stride, int g, int dim, const uint16_t* rows, size_t stride,
               size_t n, float* acc) {
  value_rows<F16Rows>(p, p_stride, g, dim, rows, stride, n, acc);
}

// exp(x) for x <= 0 (scores minus their running maximum): Cody-Waite reduction to r in
// [-ln2/2, ln2/2], a degree-6 polynomial, and scalef for the 2^n (which also flushes very negative
// x to 0 without overflow).
inline __m512 exp_ps(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

float softmax(float* s, size_t n, float* m, float* l) {
  __m512 mx = _mm512_set1_ps(*m);
  for (size_t t = 0; t < n; t += 16) {
    mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(mx, tail_mask(n - t), s + t));
  }
  const float m_new = _mm512_reduce_max_ps(mx);
  const float alpha = *m == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(*m - m_new);
  const __m512 mv = _mm512_set1_ps(m_new);
  __m512 sum = _mm512_setzero_ps();
  for (size_t t = 0; t < n; t += 16) {
    const __mmask16 k = tail_mask(n - t);
    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + t), mv));
    _mm512_mask_storeu_ps(s + t, k, e);
    sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(k, e));
  }
  *m = m_new;
  *l = *l * alpha + _mm512_reduce_add_ps(sum);
  return alpha;
}

}  // namespace
}  // namespace polarquant

#include "cpu/avx512_target_end.h"

namespace polarquant {

const KernelSet* avx512_kernels() {
  static const KernelSet set = [] {
    KernelSet k{"avx512", score_f32, score_f16, value_f32, value_f16, nullptr, nullptr, softmax};
    avx512_polar_kernels(k);
    return k;
  }();
  static const bool supported =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512vbmi");
  return supported ? &set : nullptr;
}

}  // namespace polarquant
#else
namespace polarquant {
const KernelSet* avx512_kernels() {
  return nullptr;
}
}  // namespace polarquant
#endif
