// Seeded random rotations used as PolarQuant's preconditioner (and by the peer codecs that rotate).
// The same (kind, dim, seed) gives the same rotation, bit for bit, on every machine and compiler:
// the generator, the Gaussian sampler and the QR factorisation are written out here with a fixed
// order of operations and no std:: distributions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace polarquant {

enum class RotationKind {
  kNone,      // identity: no preconditioning
  kDense,     // Haar-distributed orthogonal d x d matrix (QR of a Gaussian matrix, sign-corrected)
  kHadamard,  // randomized Hadamard: random signs, then the orthonormal Walsh-Hadamard transform;
              // power-of-two d only (other d are refused with a message; use kDense for them)
};

std::string_view rotation_kind_name(RotationKind kind);
// Parses "none", "dense" or "hadamard"; throws InvalidArgument naming the accepted values.
RotationKind parse_rotation_kind(std::string_view name);

class Rotation {
 public:
  Rotation() = default;
  // Throws InvalidArgument for dim < 1, dim > 65536, or kHadamard with a non-power-of-two dim.
  Rotation(RotationKind kind, int dim, uint64_t seed);

  RotationKind kind() const { return kind_; }
  int dim() const { return dim_; }
  uint64_t seed() const { return seed_; }

  // y = S x for n vectors stored row after row (n x dim). x and y may be the same buffer.
  void forward(const float* x, float* y, size_t n = 1) const;
  // x = S^T y, the exact inverse of forward up to float rounding.
  void inverse(const float* y, float* x, size_t n = 1) const;

  // The dense matrix S (row-major, dim x dim); empty unless kind() == kDense.
  const std::vector<float>& matrix() const { return matrix_; }
  // The random signs (+1/-1) of the Hadamard rotation; empty unless kind() == kHadamard.
  const std::vector<float>& signs() const { return signs_; }

 private:
  RotationKind kind_ = RotationKind::kNone;
  int dim_ = 0;
  uint64_t seed_ = 0;
  std::vector<float> matrix_;      // kDense: S, row-major
  std::vector<float> transposed_;  // kDense: S^T, row-major (the forward pass streams its rows)
  std::vector<float> signs_;       // kHadamard: diagonal D, S = H D / sqrt(d)
};

// In-place orthonormal fast Walsh-Hadamard transform of one vector of power-of-two length n
// (it is its own inverse).
void walsh_hadamard(float* x, int n);

}  // namespace polarquant
