// The recursive polar transform of PolarQuant (paper section 3), without quantization.
//
// For a vector y of dimension d and L levels (d divisible by 2^L), the output of one vector is
//   angles: d - d/2^L values, level by level: level 1 (d/2 angles in [0, 2pi)), then level 2
//           (d/4 angles in [0, pi/2]), ... level L (d/2^L angles in [0, pi/2]);
//   radii:  d/2^L values, the Euclidean norm of each block of 2^L consecutive coordinates.
#pragma once

#include <cstddef>

namespace polarquant {

struct PolarShape {
  int dim = 0;
  int levels = 0;
  int block() const { return 1 << levels; }        // coordinates per radius
  int num_radii() const { return dim >> levels; }  // d / 2^L
  int num_angles() const { return dim - num_radii(); }
  int angles_at(int level) const { return dim >> level; }                // level in 1..L
  int offset_of(int level) const { return dim - (dim >> (level - 1)); }  // first angle of level
};

// Throws InvalidArgument unless 1 <= levels <= 16, dim >= 2 and dim % 2^levels == 0.
PolarShape make_polar_shape(int dim, int levels);

// Forward transform of n vectors (row after row, n x dim) into n x num_angles angles and
// n x num_radii radii.
void polar_forward(const PolarShape& shape, const float* y, float* angles, float* radii,
                   size_t n = 1);
// Exact inverse: y from angles and radii.
void polar_inverse(const PolarShape& shape, const float* angles, const float* radii, float* y,
                   size_t n = 1);

}  // namespace polarquant
