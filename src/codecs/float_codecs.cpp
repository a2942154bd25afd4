#include "codecs/float_codecs.h"

#include <polarquant/error.h>
#include <polarquant/half.h>

#include <cmath>
#include <cstring>
#include <string>

namespace polarquant {
namespace {

void check_dim(const char* codec, int dim) {
  if (dim < 1 || dim > 65536) {
    throw_invalid(std::string(codec) + " codec: dim " + std::to_string(dim) +
                  " out of range; expected 1..65536");
  }
}

// Checks the whole input before anything is written, so a refused call leaves codes untouched.
void check_finite(const char* codec, const float* x, size_t n, int dim, float limit) {
  const size_t count = n * static_cast<size_t>(dim);
  for (size_t i = 0; i < count; ++i) {
    if (!std::isfinite(x[i]) || std::fabs(x[i]) >= limit) {
      throw_invalid(std::string(codec) + " codec: vector " + std::to_string(i / dim) +
                    ", coordinate " + std::to_string(i % dim) + " is " + std::to_string(x[i]) +
                    "; expected a finite value" +
                    (std::isfinite(limit) ? " below 65520 in magnitude (fp16 range)" : ""));
    }
  }
}

}  // namespace

F32Codec::F32Codec(int dim) : dim_(dim) {
  check_dim("f32", dim);
}

void F32Codec::encode(const float* x, size_t n, uint8_t* codes) const {
  check_finite("f32", x, n, dim_, INFINITY);
  std::memcpy(codes, x, n * group_bytes());
}

void F32Codec::decode(const uint8_t* codes, size_t n, float* x) const {
  const size_t count = n * static_cast<size_t>(dim_);
  for (size_t i = 0; i < count; ++i) {
    float value;
    std::memcpy(&value, codes + 4 * i, 4);
    if (!std::isfinite(value)) {
      throw_format("f32 codec: group " + std::to_string(i / dim_) + " holds a non-finite value");
    }
    x[i] = value;
  }
}

F16Codec::F16Codec(int dim) : dim_(dim) {
  check_dim("f16", dim);
}

void F16Codec::encode(const float* x, size_t n, uint8_t* codes) const {
  check_finite("f16", x, n, dim_, 65520.0f);
  const size_t count = n * static_cast<size_t>(dim_);
  for (size_t i = 0; i < count; ++i) {
    const uint16_t h = float_to_half(x[i]);
    std::memcpy(codes + 2 * i, &h, 2);
  }
}

void F16Codec::decode(const uint8_t* codes, size_t n, float* x) const {
  const size_t count = n * static_cast<size_t>(dim_);
  for (size_t i = 0; i < count; ++i) {
    uint16_t h;
    std::memcpy(&h, codes + 2 * i, 2);
    if ((h & 0x7c00u) == 0x7c00u) {
      throw_format("f16 codec: group " + std::to_string(i / dim_) + " holds an infinity or NaN");
    }
    x[i] = half_to_float(h);
  }
}

}  // namespace polarquant
