// bf16 reference codec: each coordinate stored as bfloat16 (little-endian), 16 bits per coordinate.
#include <polarquant/error.h>
#include <polarquant/half.h>

#include "codecs/bit_pack.h"
#include "codecs/peer_codecs.h"

#include <cmath>

namespace polarquant::codecs {
namespace {

class Bf16Codec final : public Codec {
 public:
  explicit Bf16Codec(int dim) : dim_(dim) {}
  std::string name() const override { return "bf16"; }
  int dim() const override { return dim_; }
  size_t group_bytes() const override { return 2 * static_cast<size_t>(dim_); }

  void encode(const float* x, size_t n, uint8_t* codes) const override {
    check_finite("bf16", x, n, dim_);
    const size_t total = n * static_cast<size_t>(dim_);
    for (size_t i = 0; i < total; ++i) {
      // Finite floats above the largest bf16 round to infinity: refuse them like non-finite input.
      if ((float_to_bf16(x[i]) & 0x7f80u) == 0x7f80u) {
        throw_invalid("bf16 encode: vector " + std::to_string(i / static_cast<size_t>(dim_)) +
                      ", coordinate " + std::to_string(i % static_cast<size_t>(dim_)) +
                      " overflows bf16; expected |value| < 3.39e38");
      }
    }
    for (size_t i = 0; i < total; ++i) store_u16(codes + 2 * i, float_to_bf16(x[i]));
  }

  void decode(const uint8_t* codes, size_t n, float* x) const override {
    const size_t total = n * static_cast<size_t>(dim_);
    for (size_t i = 0; i < total; ++i) {
      if ((load_u16(codes + 2 * i) & 0x7f80u) == 0x7f80u) {
        throw_format("bf16 decode: vector " + std::to_string(i / static_cast<size_t>(dim_)) +
                     ", coordinate " + std::to_string(i % static_cast<size_t>(dim_)) +
                     " is not finite; the codes cannot come from encode");
      }
    }
    for (size_t i = 0; i < total; ++i) x[i] = bf16_to_float(load_u16(codes + 2 * i));
  }

 private:
  int dim_;
};

}  // namespace

std::unique_ptr<Codec> make_bf16_codec(int dim) {
  if (dim < 1) throw_invalid("bf16: dim " + std::to_string(dim) + " must be >= 1");
  return std::make_unique<Bf16Codec>(dim);
}

}  // namespace polarquant::codecs
