// The two halves of the AVX2 kernel set (attention_avx2_rows.cpp, attention_avx2_polar.cpp).
#pragma once

#include "attention/kernels.h"

namespace polarquant {

// Sets the PolarQuant entries (score_polar, value_polar) of the AVX2 set.
void avx2_polar_kernels(KernelSet& set);

}  // namespace polarquant
