#include <polarquant/error.h>
#include <polarquant/rotation.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/random.h"
#include "core/rotation_simd.h"

namespace polarquant {

std::string_view rotation_kind_name(RotationKind kind) {
  switch (kind) {
    case RotationKind::kNone:
      return "none";
    case RotationKind::kDense:
      return "dense";
    case RotationKind::kHadamard:
      return "hadamard";
  }
  return "unknown";
}

RotationKind parse_rotation_kind(std::string_view name) {
  if (name == "none") return RotationKind::kNone;
  if (name == "dense") return RotationKind::kDense;
  if (name == "hadamard") return RotationKind::kHadamard;
  throw_invalid("unknown rotation '" + std::string(name) +
                "'; expected one of: none, dense, hadamard");
}

namespace {

bool is_power_of_two(int n) {
  return n > 0 && (n & (n - 1)) == 0;
}

// Rows of a dim x dim Gaussian matrix orthonormalised by modified Gram-Schmidt, run twice for
// stability, in double. Gram-Schmidt is QR with a positive diagonal of R, i.e. the sign-corrected
// QR that makes the result Haar-distributed.
std::vector<double> haar_orthogonal(int dim, uint64_t seed) {
  Rng rng(seed);
  const size_t d = static_cast<size_t>(dim);
  std::vector<double> m(d * d);
  for (auto& v : m) v = rng.gaussian();
  for (size_t i = 0; i < d; ++i) {
    double* row = &m[i * d];
    for (int pass = 0; pass < 2; ++pass) {
      for (size_t j = 0; j < i; ++j) {
        const double* prev = &m[j * d];
        double dot = 0.0;
        for (size_t k = 0; k < d; ++k) dot += row[k] * prev[k];
        for (size_t k = 0; k < d; ++k) row[k] -= dot * prev[k];
      }
    }
    double norm = 0.0;
    for (size_t k = 0; k < d; ++k) norm += row[k] * row[k];
    const double inv = 1.0 / std::sqrt(norm);
    for (size_t k = 0; k < d; ++k) row[k] *= inv;
  }
  return m;
}

// out = sum_j in[j] * rows[j, :] in input order; the SIMD twin is in rotation_simd.cpp.
void apply_rows(const float* rows, const float* in, float* out, int dim) {
  thread_local std::vector<float> copy;
  if (in == out) {  // in place: keep the input while out is overwritten
    copy.assign(in, in + dim);
    in = copy.data();
  }
  combine_rows_simd(rows, in, out, dim);
}

}  // namespace

void combine_rows_scalar(const float* rows, const float* in, float* out, int dim) {
  for (int k = 0; k < dim; ++k) out[k] = 0.0f;
  for (int j = 0; j < dim; ++j) {
    const float c = in[j];
    const float* r = rows + static_cast<size_t>(j) * dim;
    for (int k = 0; k < dim; ++k) out[k] += c * r[k];
  }
}

Rotation::Rotation(RotationKind kind, int dim, uint64_t seed)
    : kind_(kind), dim_(dim), seed_(seed) {
  if (dim < 1 || dim > 65536) {
    throw_invalid("rotation dimension " + std::to_string(dim) + " is out of range [1, 65536]");
  }
  if (kind == RotationKind::kDense) {
    const std::vector<double> m = haar_orthogonal(dim, seed);
    const size_t d = static_cast<size_t>(dim);
    matrix_.resize(d * d);
    transposed_.resize(d * d);
    for (size_t i = 0; i < d; ++i) {
      for (size_t j = 0; j < d; ++j) {
        matrix_[i * d + j] = static_cast<float>(m[i * d + j]);
        transposed_[j * d + i] = matrix_[i * d + j];
      }
    }
  } else if (kind == RotationKind::kHadamard) {
    if (!is_power_of_two(dim)) {
      throw_invalid("the Hadamard rotation needs a power-of-two dimension, got " +
                    std::to_string(dim) + "; use the dense rotation for this dimension");
    }
    Rng rng(seed);
    signs_.resize(static_cast<size_t>(dim));
    for (auto& s : signs_) s = (rng.next_u64() >> 63) ? -1.0f : 1.0f;
  }
}

void walsh_hadamard(float* x, int n) {
  for (int len = 1; len < n; len <<= 1) {
    for (int i = 0; i < n; i += len << 1) {
      for (int j = i; j < i + len; ++j) {
        const float a = x[j];
        const float b = x[j + len];
        x[j] = a + b;
        x[j + len] = a - b;
      }
    }
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(n));
  for (int i = 0; i < n; ++i) x[i] *= scale;
}

void Rotation::forward(const float* x, float* y, size_t n) const {
  const size_t d = static_cast<size_t>(dim_);
  for (size_t v = 0; v < n; ++v) {
    const float* in = x + v * d;
    float* out = y + v * d;
    switch (kind_) {
      case RotationKind::kNone:
        if (in != out) std::memmove(out, in, sizeof(float) * d);
        break;
      case RotationKind::kDense:  // y = S x = sum_j x_j S[:, j] = sum_j x_j S^T[j, :]
        apply_rows(transposed_.data(), in, out, dim_);
        break;
      case RotationKind::kHadamard:
        for (size_t k = 0; k < d; ++k) out[k] = in[k] * signs_[k];
        walsh_hadamard(out, dim_);
        break;
    }
  }
}

void Rotation::inverse(const float* y, float* x, size_t n) const {
  const size_t d = static_cast<size_t>(dim_);
  for (size_t v = 0; v < n; ++v) {
    const float* in = y + v * d;
    float* out = x + v * d;
    switch (kind_) {
      case RotationKind::kNone:
        if (in != out) std::memmove(out, in, sizeof(float) * d);
        break;
      case RotationKind::kDense:  // x = S^T y = sum_i y_i S[i, :]
        apply_rows(matrix_.data(), in, out, dim_);
        break;
      case RotationKind::kHadamard:
        if (in != out) std::memmove(out, in, sizeof(float) * d);
        walsh_hadamard(out, dim_);
        for (size_t k = 0; k < d; ++k) out[k] *= signs_[k];
        break;
    }
  }
}

}  // namespace polarquant
