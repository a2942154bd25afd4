// LSB-first bit packing of small codes (1..8 bits each) into a byte stream: code i occupies the
// bits following code i-1, starting at bit 0 of the first byte. Used by the per-vector codec
// format.
#pragma once

#include <cstddef>
#include <cstdint>

namespace polarquant {

class BitWriter {
 public:
  explicit BitWriter(uint8_t* out) : out_(out) {}
  void put(uint32_t code, int bits) {
    acc_ |= static_cast<uint64_t>(code & ((1u << bits) - 1u)) << filled_;
    filled_ += bits;
    while (filled_ >= 8) {
      *out_++ = static_cast<uint8_t>(acc_);
      acc_ >>= 8;
      filled_ -= 8;
    }
  }
  // Writes the last partial byte (zero-padded).
  void flush() {
    if (filled_ > 0) *out_++ = static_cast<uint8_t>(acc_);
    acc_ = 0;
    filled_ = 0;
  }

 private:
  uint8_t* out_;
  uint64_t acc_ = 0;
  int filled_ = 0;
};

class BitReader {
 public:
  explicit BitReader(const uint8_t* in) : in_(in) {}
  uint32_t get(int bits) {
    while (filled_ < bits) {
      acc_ |= static_cast<uint64_t>(*in_++) << filled_;
      filled_ += 8;
    }
    const uint32_t code = static_cast<uint32_t>(acc_ & ((1u << bits) - 1u));
    acc_ >>= bits;
    filled_ -= bits;
    return code;
  }

 private:
  const uint8_t* in_;
  uint64_t acc_ = 0;
  int filled_ = 0;
};

}  // namespace polarquant
