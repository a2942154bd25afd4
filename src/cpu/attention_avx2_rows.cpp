// The AVX2 kernel set (AVX2, FMA, F16C: most x86 laptops and desktops since 2013-2015), part 1:
// the fp32/fp16 row kernels, the softmax step and the set itself. The PolarQuant kernels are in
// attention_avx2_polar.cpp. Only these two files are built for AVX2, through a target pragma placed
// after every standard header (as in attention_avx512_rows.cpp): compiling the files with -mavx2
// would also build for AVX2 the inline standard-library functions they instantiate, and the linker
// may keep those copies for the whole program, which then faults on a CPU without AVX2. The set is
// used only where the CPU reports all three features.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "attention/kernels.h"
#include "cpu/attention_avx2.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

namespace polarquant {
namespace {

// Lanes [0, n) set (n <= 8), for maskload/maskstore.
inline __m256i lane_mask(size_t n) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n < 8 ? n : 8)), lanes);
}

// Loaders of 8 row elements, `count` of them valid (the rest read as 0).
struct F32Rows {
  static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
  static __m256 load(const float* p, int count) {
    return _mm256_maskload_ps(p, lane_mask(static_cast<size_t>(count)));
  }
};
struct F16Rows {
  static __m256 load(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static __m256 load(const uint16_t* p, int count) {
    alignas(16) uint16_t tmp[8] = {};
    std::memcpy(tmp, p, static_cast<size_t>(count) * 2);
    return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(tmp)));
  }
};

// The sums of the 8 lanes of a, b, c, d, as lanes 0-3.
inline __m128 reduce4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

// scores[h][t] = q[h] . row_t for 2 tokens x H heads per pass (H <= 4): 2H accumulators, each row
// chunk converted once per pass, q read from memory by the FMAs.
template <typename Loader, typename T, int H>
void score_pass(const float* q, int dim, const T* r0, const T* r1, int nt, float* scores,
                size_t s_stride) {
  __m256 acc[2][4];
  for (int i = 0; i < 2; ++i)
    for (int h = 0; h < 4; ++h) acc[i][h] = _mm256_setzero_ps();
  int j = 0;
  for (; j + 8 <= dim; j += 8) {
    const __m256 x0 = Loader::load(r0 + j), x1 = Loader::load(r1 + j);
    for (int h = 0; h < H; ++h) {
      const __m256 qv = _mm256_loadu_ps(q + h * dim + j);
      acc[0][h] = _mm256_fmadd_ps(qv, x0, acc[0][h]);
      acc[1][h] = _mm256_fmadd_ps(qv, x1, acc[1][h]);
    }
  }
  if (j < dim) {
    const int rest = dim - j;
    const __m256 x0 = Loader::load(r0 + j, rest), x1 = Loader::load(r1 + j, rest);
    for (int h = 0; h < H; ++h) {
      const __m256 qv = F32Rows::load(q + h * dim + j, rest);
      acc[0][h] = _mm256_fmadd_ps(qv, x0, acc[0][h]);
      acc[1][h] = _mm256_fmadd_ps(qv, x1, acc[1][h]);
    }
  }
  for (int i = 0; i < nt; ++i) {
    alignas(16) float s[4];
    _mm_store_ps(s, reduce4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
    for (int h = 0; h < H; ++h) scores[h * s_stride + i] = s[h];
  }
}

template <typename Loader, typename T>
void score_rows(const float* q, int g, int dim, const T* rows, size_t stride, size_t n,
                float* scores, size_t s_stride) {
  for (size_t t0 = 0; t0 < n; t0 += 2) {
    const int nt = n - t0 < 2 ? 1 : 2;
    const T* r0 = rows + t0 * stride;
    const T* r1 = nt == 2 ? r0 + stride : r0;
    for (int h0 = 0; h0 < g; h0 += 4) {
      const float* qh = q + h0 * dim;
      float* s = scores + h0 * s_stride + t0;
      switch (g - h0 < 4 ? g - h0 : 4) {
        case 1:
          score_pass<Loader, T, 1>(qh, dim, r0, r1, nt, s, s_stride);
          break;
        case 2:
          score_pass<Loader, T, 2>(qh, dim, r0, r1, nt, s, s_stride);
          break;
        case 3:
          score_pass<Loader, T, 3>(qh, dim, r0, r1, nt, s, s_stride);
          break;
        default:
          score_pass<Loader, T, 4>(qh, dim, r0, r1, nt, s, s_stride);
      }
    }
  }
}

// acc[h] += sum_t p[h][t] row_t; 4 tokens per pass, so each accumulator chunk is loaded and
// stored once per 4 tokens and each row chunk converted once for all heads.
template <typename Loader, typename T>
void value_rows(const float* p, size_t p_stride, int g, int dim, const T* rows, size_t stride,
                size_t n, float* acc) {
  for (size_t t0 = 0; t0 < n; t0 += 4) {
    const int nt = static_cast<int>(n - t0 < 4 ? n - t0 : 4);
    for (int j = 0; j < dim; j += 8) {
      const int rest = dim - j < 8 ? dim - j : 8;
      __m256 x[4];
      for (int i = 0; i < nt; ++i) {
        const T* r = rows + (t0 + i) * stride + j;
        x[i] = rest == 8 ? Loader::load(r) : Loader::load(r, rest);
      }
      const __m256i m = lane_mask(static_cast<size_t>(rest));
      for (int h = 0; h < g; ++h) {
        const float* ph = p + h * p_stride + t0;
        float* a_ptr = acc + h * dim + j;
        __m256 a = rest == 8 ? _mm256_loadu_ps(a_ptr) : _mm256_maskload_ps(a_ptr, m);
        for (int i = 0; i < nt; ++i) a = _mm256_fmadd_ps(_mm256_set1_ps(ph[i]), x[i], a);
        if (rest == 8) {
          _mm256_storeu_ps(a_ptr, a);
        } else {
          _mm256_maskstore_ps(a_ptr, m, a);
        }
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

// exp(x) for x <= 0, as the AVX-512 set computes it (Cody-Waite reduction, degree-6 polynomial);
// AVX2 has no scalef, so 2^n (n >= -150) is applied as two normal powers of two, 2^(n/2) and
// 2^(n - n/2), which also flushes very negative x to 0 without building a denormal exponent.
inline __m256 exp_ps(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-104.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i n1 = _mm256_srai_epi32(ni, 1);
  const __m256i n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

inline float reduce_add(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float reduce_max(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

float softmax(float* s, size_t n, float* m, float* l) {
  __m256 mx = _mm256_set1_ps(*m);
  size_t t = 0;
  for (; t + 8 <= n; t += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(s + t));
  float m_new = reduce_max(mx);
  for (size_t u = t; u < n; ++u) m_new = s[u] > m_new ? s[u] : m_new;
  const float alpha = *m == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(*m - m_new);
  const __m256 mv = _mm256_set1_ps(m_new);
  __m256 sum = _mm256_setzero_ps();
  for (t = 0; t < n; t += 8) {
    const __m256i k = lane_mask(n - t);
    const __m256 e = exp_ps(_mm256_sub_ps(_mm256_maskload_ps(s + t, k), mv));
    _mm256_maskstore_ps(s + t, k, e);
    sum = _mm256_add_ps(sum, _mm256_and_ps(e, _mm256_castsi256_ps(k)));
  }
  *m = m_new;
  *l = *l * alpha + reduce_add(sum);
  return alpha;
}

}  // namespace
}  // namespace polarquant

#pragma GCC pop_options

namespace polarquant {

const KernelSet* avx2_kernels() {
  static const KernelSet set = [] {
    KernelSet k{"avx2", score_f32, score_f16, value_f32, value_f16, nullptr, nullptr, softmax};
    avx2_polar_kernels(k);
    return k;
  }();
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                                __builtin_cpu_supports("f16c");
  return supported ? &set : nullptr;
}

}  // namespace polarquant
#else
namespace polarquant {
const KernelSet* avx2_kernels() {
  return nullptr;
}
}  // namespace polarquant
#endif
