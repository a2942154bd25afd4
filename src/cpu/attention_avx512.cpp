// The AVX-512 kernel set (F, BW, DQ, VL, VBMI). Only this file is compiled for AVX-512 (through the
// target pragma below, after every standard header, so no inline library code is built for it); the
// set is used only when the CPU reports all five features. Tokens sit in SIMD lanes for the
// PolarQuant kernels (16 tokens of one code field per load), coordinates for the row kernels.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "attention/kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define POLARQUANT_HAVE_AVX512 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512vbmi,f16c,fma")
// GCC 12's AVX-512 headers trip its own (un)initialized-use warnings through _mm*_undefined_*().
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

namespace polarquant {
namespace {

inline __mmask16 tail_mask(size_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

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

// ---- PolarQuant pages ------------------------------------------------------------------------

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
constexpr int kHeadGroup = 8;  // query heads scored per pass over the codes

// Calls f(std::integral_constant<int, v>{}) when Lo <= v <= Hi and returns true; false otherwise.
// The one place where a run-time count (heads of a pass, levels) becomes a template parameter.
template <int Lo, int Hi, class F>
bool with_count(int v, F&& f) {
  if constexpr (Lo > Hi) {
    return false;
  } else {
    if (v == Lo) {
      f(std::integral_constant<int, Lo>{});
      return true;
    }
    return with_count<Lo + 1, Hi>(v, std::forward<F>(f));
  }
}

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

// ---- The paper allocation: L = 4, bits 4,2,2,2 -------------------------------------------------
// The same arithmetic as score_polar_levels<4> / value_polar_levels<4>, with every code width and
// head count known at compile time: no per-node width switches, the head accumulators and the
// cos/sin tables in registers, and codes unpacked by one vpmultishiftqb per field (the generic
// path widens bytes to lanes and then shifts each lane: two vector uops). vpermps reads only the
// low 4 bits of each lane, so the bits the multishift leaves above a code do not matter (2-bit
// tables repeat with period 4, see build_polar_tables).

bool is_paper_allocation(const PolarTables& tb) {
  return tb.levels == 4 && tb.bits[0] == 4 && tb.bits[1] == 2 && tb.bits[2] == 2 && tb.bits[3] == 2;
}

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

void score_polar(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                 float* scores, size_t s_stride) {
  if (is_paper_allocation(tb)) {
    switch (tb.radius) {
      case RadiusPrecision::kFp16:
        return score_paper<RadiusPrecision::kFp16>(tb, region, slot, n, g, scores, s_stride);
      case RadiusPrecision::kBf16:
        return score_paper<RadiusPrecision::kBf16>(tb, region, slot, n, g, scores, s_stride);
      case RadiusPrecision::kFp32:
        return score_paper<RadiusPrecision::kFp32>(tb, region, slot, n, g, scores, s_stride);
    }
  }
  const bool done = with_count<1, 8>(tb.levels, [&](auto levels) {
    score_polar_levels<decltype(levels)::value>(tb, region, slot, n, g, scores, s_stride);
  });
  if (!done) scalar_kernels().score_polar(tb, region, slot, n, g, scores, s_stride);
}

void value_polar(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                 const float* p, size_t p_stride, float* acc) {
  if (is_paper_allocation(tb)) {
    switch (tb.radius) {
      case RadiusPrecision::kFp16:
        return value_paper<RadiusPrecision::kFp16>(tb, region, slot, n, g, p, p_stride, acc);
      case RadiusPrecision::kBf16:
        return value_paper<RadiusPrecision::kBf16>(tb, region, slot, n, g, p, p_stride, acc);
      case RadiusPrecision::kFp32:
        return value_paper<RadiusPrecision::kFp32>(tb, region, slot, n, g, p, p_stride, acc);
    }
  }
  const bool done = with_count<1, 8>(tb.levels, [&](auto levels) {
    value_polar_levels<decltype(levels)::value>(tb, region, slot, n, g, p, p_stride, acc);
  });
  if (!done) scalar_kernels().value_polar(tb, region, slot, n, g, p, p_stride, acc);
}

}  // namespace

const KernelSet* avx512_kernels() {
  static const KernelSet set{"avx512",  score_f32,   score_f16,   value_f32,
                             value_f16, score_polar, value_polar, softmax};
  static const bool supported =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512vbmi");
  return supported ? &set : nullptr;
}

}  // namespace polarquant

#pragma GCC diagnostic pop
#pragma GCC pop_options
#else
namespace polarquant {
const KernelSet* avx512_kernels() {
  return nullptr;
}
}  // namespace polarquant
#endif
