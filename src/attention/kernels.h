// The inner loops of decode attention, one set per instruction-set level. Every set does exactly
// the same arithmetic up to float rounding (order of additions, fused multiply-adds, exp
// polynomial, and in the AVX2 set the level-1 tables' half-turn rounding, see
// PolarTables::level1_half_turn): the scalar set is the reference the tests hold the SIMD sets to
// (tests/attention_kernels_test.cpp). One exception: the AVX2 set scores paper pages with the half
// turn from int8 tables (PolarTables::a1_i8); its twin is scalar_score_paper_i8, and its precision
// against the float kernel is bounded in tests/attention_avx2_i8_test.cpp; likewise the other
// allocations of polar_i8_scores_apply (a1_i8_pair, scalar_score_polar_i8,
// tests/attention_avx2_i8_polar_test.cpp).
//
// Shapes: g query heads share one KV head; q is g x dim (already scaled, and rotated for PolarQuant
// keys); scores are g rows of stride s_stride; acc is g x dim.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cache/page_format.h"

namespace polarquant {

// Per-call tables for one PolarQuant page format (keys or values).
struct PolarTables {
  const PolarPageLayout* layout = nullptr;
  RadiusPrecision radius = RadiusPrecision::kFp16;
  int dim = 0, levels = 0;
  int bits[16] = {};
  // cos/sin of the centroids of level l at [l-1], padded with zeros to table_size(bits) entries.
  std::vector<float> cos[16], sin[16];
  // Scores only: per query head, dim/2 level-1 tables of table_size(bits[0]) entries:
  // a1[(h * dim/2 + n) * size + c] = q'[2n] cos(t_c) + q'[2n+1] sin(t_c).
  std::vector<float> a1;
  // SIMD unpacking constants per level (see code_bit): the right shift of each of 16 lanes for
  // interleaved widths, and the vpmultishiftqb control for the others.
  int32_t lane_shifts[16][16] = {};
  uint64_t multishift[16] = {};
  // Level 1 has 16 or 32 codes (4 or 5 bits) whose angles are a half turn apart: entry c + 8 (c +
  // 16) of cos[0] and sin[0] is the negation of entry c to within 2^-20 (the analytic codebook:
  // equal in exact arithmetic, 1-2 float ulps apart as stored). The AVX2 set then looks up half
  // the entries and flips the sign (one permute instead of two and a blend at 4 bits, two and a
  // blend instead of four and three at 5), reading entry c + half as -entry c: its results differ
  // from the scalar twin's by that rounding of the table (relative 2e-7 per term).
  bool level1_half_turn = false;
  // Scores only, when level1_half_turn holds at 4 bits: a1 quantized to int8 for the AVX2 integer
  // score kernel (docs/BENCHMARKS.md 2.5.4). Per query head h and pair couple m (pairs 2m, 2m + 1),
  // 16 bytes: a1_i8[(h * dim/4 + m) * 16 + 8 * j + c] = round(a1 of pair 2m + j, code c / scale),
  // c < 8 (entry c + 8 is the negation), clamped to +-127; a1_i8_scale[h] = the head's largest
  // |a1| / 127 (0 for a zero query).
  std::vector<int8_t> a1_i8;
  std::vector<float> a1_i8_scale;
  // Scores only, for the AVX2 integer score kernel of the other allocations of L >= 3 levels whose
  // level 1 has 4 bits, or 5 with the half turn (docs/BENCHMARKS.md 2.5.7): per query head h and
  // pair n, 16 bytes: a1_i8_pair[(h * dim/2 + n) * 16 + c] = round(a1 of pair n, code c / scale),
  // c < 16 (at 5 bits entry c + 16 is the negation), clamped to +-127; the scale a1_i8_scale[h] as
  // above. Empty for paper's allocation (a1_i8) and where it does not apply.
  std::vector<int8_t> a1_i8_pair;
  // With a1_i8_pair, where levels 2 and 3 have 4 bits (polar_i8_q15_levels): their cos/sin as
  // Q15, round(x * 32768) clamped to 32767, for the integer kernel's levels 3 and 2:
  // q15[level - 2][0 cos, 1 sin][code].
  int16_t q15[2][2][16] = {};
  static int table_size(int bits) { return bits <= 4 ? 16 : (bits == 5 ? 32 : 1 << bits); }
};

// The paper's allocation (L = 4; 4,2,2,2 bits), which the SIMD sets give kernels of its own.
inline bool is_paper_allocation(const PolarTables& tb) {
  return tb.levels == 4 && tb.bits[0] == 4 && tb.bits[1] == 2 && tb.bits[2] == 2 && tb.bits[3] == 2;
}

// Builds the cos/sin tables of the codec (and, when q_rotated is given, the level-1 score tables of
// g query heads; with int8_score_tables also their int8 copies a1_i8 / a1_i8_pair and q15, which
// only a kernel set with KernelSet::int8_score_tables reads).
void build_polar_tables(const PolarPageFormat& format, const float* q_rotated, int g,
                        PolarTables& tables, bool int8_score_tables);

struct KernelSet {
  std::string name;
  // scores[h][t] = q[h] . row_t for t < n, rows at stride `stride` floats/halves.
  void (*score_f32)(const float* q, int g, int dim, const float* rows, size_t stride, size_t n,
                    float* scores, size_t s_stride);
  void (*score_f16)(const float* q, int g, int dim, const uint16_t* rows, size_t stride, size_t n,
                    float* scores, size_t s_stride);
  // acc[h] += sum_t p[h][t] row_t.
  void (*value_f32)(const float* p, size_t p_stride, int g, int dim, const float* rows,
                    size_t stride, size_t n, float* acc);
  void (*value_f16)(const float* p, size_t p_stride, int g, int dim, const uint16_t* rows,
                    size_t stride, size_t n, float* acc);
  // PolarQuant page region, slots [slot, slot + n), slot a multiple of 16, n <= page - slot.
  void (*score_polar)(const PolarTables& t, const uint8_t* region, size_t slot, size_t n, int g,
                      float* scores, size_t s_stride);
  // acc_lanes is g x dim x value_lanes: lane i accumulates the slots congruent to i mod
  // value_lanes (rotated domain).
  void (*value_polar)(const PolarTables& t, const uint8_t* region, size_t slot, size_t n, int g,
                      const float* p, size_t p_stride, float* acc_lanes);
  // Online softmax step for one head: s[0..n) scores in, probabilities exp(s - m_new) out;
  // m and l updated; returns the factor exp(m_old - m_new) the accumulator must be scaled by.
  float (*softmax)(float* s, size_t n, float* m, float* l);
  // Lanes per coordinate of value_polar's accumulators: 16 (one AVX-512 register, the scalar set),
  // or 8 for the AVX2 set, whose g x d x 16 floats (32 KiB at g = 4, d = 128) would fill a 32 KiB
  // L1d (Zen 2/3, most Intel cores) by themselves.
  int value_lanes = 16;
  // Whether score_polar reads the int8 score tables (the AVX2 set): build_polar_tables builds them
  // only then, since it runs per query and KV head.
  bool int8_score_tables = false;
};

// The scalar twin of the AVX2 integer score kernel (paper widths with the level-1 half turn and
// a1_i8 built): per token, each level-1 pair radius f (radius times the level 2..4 cos/sin, the
// radius first multiplied by 127 / the token's largest block radius) rounded to an integer 0..127,
// times the head's int8 table entry, summed exactly as int32; score = float(sum) * (largest radius
// / 127) * a1_i8_scale[h]. Same contract as KernelSet::score_polar.
void scalar_score_paper_i8(const PolarTables& t, const uint8_t* region, size_t slot, size_t n,
                           int g, float* scores, size_t s_stride);

// Whether the AVX2 set scores these tables, g query heads, from a1_i8_pair (L = 3..8, level 1 of 4
// bits or of 5 with the half turn, the tables built): its kernel's twin is then the one below.
bool polar_i8_scores_apply(const PolarTables& t, int g);

// Whether that kernel takes levels 3 and 2 in 16-bit fixed point (their codes have 4 bits, as in
// polar4kv's keys): q15 is then built, and the twin below does the same.
bool polar_i8_q15_levels(const PolarTables& t);

// The scalar twin of the AVX2 integer score kernel for the other allocations
// (polar_i8_scores_apply): per token, the level-3 node radii (the radius times the level L..4
// cos/sin), each level-1 pair factor from its node radius first multiplied by 127 / the token's
// largest node radius, then by the level 3 and 2 cos/sin, rounded to an integer 0..127, times the
// head's int8 table entry (its negation for a 5-bit code's bit 4), summed exactly as int32; score =
// float(sum) * (largest node radius / 127) * a1_i8_scale[h]. With polar_i8_q15_levels, levels 3
// and 2 in fixed point instead: the node radius times 16256 / the largest, rounded to an integer
// (Q7), times the Q15 cos/sin with vpmulhrsw's rounding ((a b + 2^14) >> 15), then rounded to
// 0..127 the same way (times 256). Same contract as KernelSet::score_polar.
void scalar_score_polar_i8(const PolarTables& t, const uint8_t* region, size_t slot, size_t n,
                           int g, float* scores, size_t s_stride);

// The scalar value_polar over accumulators of `lanes` lanes per coordinate (8 or 16): the scalar
// set's kernel (16), and the fallback of a SIMD set with another lane count.
void scalar_value_polar(const PolarTables& t, const uint8_t* region, size_t slot, size_t n, int g,
                        const float* p, size_t p_stride, float* acc_lanes, int lanes);

const KernelSet& scalar_kernels();
// nullptr when this build or CPU lacks AVX2, FMA or F16C.
const KernelSet* avx2_kernels();
// nullptr when this build or CPU lacks AVX-512 (F, BW, DQ, VL, VBMI).
const KernelSet* avx512_kernels();
// The set decode attention uses, chosen once per process: the fastest this CPU runs, or the one
// the environment variable POLARQUANT_CPU names ("scalar", "avx2", "avx512"). A name this CPU
// cannot run, or an unknown one, is reported on stderr once and the fastest set is used.
const KernelSet& best_kernels();
// The set POLARQUANT_CPU-style name `target` names, or nullptr when unknown or not runnable here.
const KernelSet* kernels_named(const std::string& target);
// The set best_kernels() uses for a POLARQUANT_CPU value: the fastest for nullptr or "", the named
// set when this CPU runs it, else the fastest (with a line on stderr).
const KernelSet& kernels_for(const char* target);
// Every set this CPU runs, scalar first, fastest last (for the equivalence tests and the
// benchmark).
std::vector<const KernelSet*> available_kernels();

}  // namespace polarquant
