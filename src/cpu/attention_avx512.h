// The parts of the AVX-512 kernel set (attention_avx512_rows.cpp, attention_avx512_polar.cpp,
// attention_avx512_paper.cpp), joined in avx512_kernels().
#pragma once

#include "attention/kernels.h"

namespace polarquant {

// Sets the PolarQuant entries (score_polar, value_polar) of the AVX-512 set.
void avx512_polar_kernels(KernelSet& set);

// The paper allocation's kernels (attention_avx512_paper.cpp): false, doing nothing, for other
// allocations. Same contracts as KernelSet::score_polar / value_polar.
bool avx512_score_paper(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                        float* scores, size_t s_stride);
bool avx512_value_paper(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                        const float* p, size_t p_stride, float* acc);

}  // namespace polarquant
