// The parts of the AVX2 kernel set (attention_avx2_rows.cpp, attention_avx2_polar.cpp,
// attention_avx2_polar_i8.cpp, attention_avx2_paper.cpp, attention_avx2_paper_i8.cpp), joined in
// avx2_kernels().
#pragma once

#include "attention/kernels.h"

namespace polarquant {

// Sets the PolarQuant entries (score_polar, value_polar) of the AVX2 set.
void avx2_polar_kernels(KernelSet& set);

// The paper allocation's kernels (attention_avx2_paper.cpp): false, doing nothing, for other
// allocations. Same contracts as KernelSet::score_polar / value_polar.
bool avx2_score_paper(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                      float* scores, size_t s_stride);
// The integer score kernel (attention_avx2_paper_i8.cpp; docs/BENCHMARKS.md 2.5.4): false, doing
// nothing, unless the allocation is paper's, level1_half_turn holds and a1_i8 is built for g heads.
// Its twin is scalar_score_paper_i8, not the float score_polar.
bool avx2_score_paper_i8(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                         float* scores, size_t s_stride);
// The integer score kernel of the other allocations (attention_avx2_polar_i8.cpp;
// docs/BENCHMARKS.md 2.5.7): false, doing nothing, unless polar_i8_scores_apply(tb, g). Its twin
// is scalar_score_polar_i8.
bool avx2_score_polar_i8(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                         float* scores, size_t s_stride);
bool avx2_value_paper(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                      const float* p, size_t p_stride, float* acc);

}  // namespace polarquant
