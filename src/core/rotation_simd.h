// Dispatch entry points of src/core/rotation_simd.cpp.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace polarquant {

// out = sum_j in[j] * rows[j, :] for a dim x dim row-major matrix; best SIMD target of this CPU.
// in and out must not overlap.
void combine_rows_simd(const float* rows, const float* in, float* out, int dim);
// The same on every SIMD target compiled in and supported here, for the equivalence tests:
// (target name, result) pairs.
void combine_rows_all_targets(const float* rows, const float* in, float* out, int dim,
                              std::vector<std::pair<std::string, std::vector<float>>>* results);
// The plain scalar twin (rotation.cpp).
void combine_rows_scalar(const float* rows, const float* in, float* out, int dim);

}  // namespace polarquant
