// Little-endian bit packing shared by the peer codecs: code i of width `bits` occupies bits
// [i*bits, (i+1)*bits) of the byte string, least significant bit first (bit k of the string is bit
// k % 8 of byte k / 8). Bits past the last code, up to the byte boundary, are zero.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/bitpack.h"

namespace polarquant::codecs {

using polarquant::BitReader;
using polarquant::BitWriter;

// Bytes needed for n codes of `bits` bits each.
inline size_t packed_bytes(size_t n, int bits) {
  return (n * static_cast<size_t>(bits) + 7) / 8;
}

// codes[i] < 2^bits, 1 <= bits <= 8. Writes packed_bytes(n, bits) bytes to out. The bit order is
// core/bitpack.h's, the one the PolarQuant records use too.
inline void pack_bits(const uint8_t* codes, size_t n, int bits, uint8_t* out) {
  BitWriter writer(out);
  for (size_t i = 0; i < n; ++i) writer.put(codes[i], bits);
  writer.flush();
}

inline void unpack_bits(const uint8_t* in, size_t n, int bits, uint8_t* codes) {
  BitReader reader(in);
  for (size_t i = 0; i < n; ++i) codes[i] = static_cast<uint8_t>(reader.get(bits));
}

inline void store_u16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v & 0xffu);
  p[1] = static_cast<uint8_t>(v >> 8);
}
inline uint16_t load_u16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (static_cast<unsigned>(p[1]) << 8));
}

}  // namespace polarquant::codecs
