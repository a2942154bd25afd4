// Device helpers shared by the kernels: reading one code or radius of a token slot from a head
// region (layout: docs/FORMAT.md section 4), and decoding one 16-coordinate unit of a vector.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cache/pair_layout.h"
#include "cuda/device_codec.h"

namespace polarquant::cuda {

// Bit position of slot t's code in a field of b-bit codes: page_format.h's code_bit, the CPU
// cache's definition (keep the two in step; the GPU tests compare pages byte for byte). Widths
// 1, 2, 4 and 8 are interleaved in groups of 16 slots (slot i of a group in byte i mod 2b at bit
// b * (i div 2b)); other widths are packed LSB first and may straddle a byte.
__host__ __device__ __forceinline__ int code_bit(int t, int bits) {
  if (bits != 1 && bits != 2 && bits != 4 && bits != 8) return t * bits;
  const int lg2 = bits == 1 ? 1 : bits == 2 ? 2 : bits == 4 ? 3 : 4;  // log2(2 * bits)
  const int i = t & 15;
  return ((t >> 4) * 2 * bits + (i & (2 * bits - 1))) * 8 + bits * (i >> lg2);
}

// Code of token `slot` in a field. B > 0 is the width known at compile time (1, 2, 4 or 8 never
// straddle a byte); other widths (B == 0: the runtime width `bits`) are read from two bytes (the
// region's 8 slack bytes keep the second read inside).
template <int B>
__device__ __forceinline__ unsigned field_code(const uint8_t* field, int slot, int bits) {
  if constexpr (B == 1 || B == 2 || B == 4 || B == 8) {
    const int bit = code_bit(slot, B);
    return (static_cast<unsigned>(field[bit >> 3]) >> (bit & 7)) & ((1u << B) - 1u);
  } else {
    if constexpr (B > 0) bits = B;
    const int bit = code_bit(slot, bits);
    const unsigned wide = field[bit >> 3] | (static_cast<unsigned>(field[(bit >> 3) + 1]) << 8);
    return (wide >> (bit & 7)) & ((1u << bits) - 1u);
  }
}

// Level 1's (cos, sin) as half2 (the specialised decoders' level-1 table), filled by threads
// tid, tid + threads, ...
__device__ __forceinline__ void load_level1_half2(const DeviceCodec& c, __half2* table, int tid,
                                                  int threads) {
  for (int i = tid; i < (1 << c.bits[0]); i += threads) {
    table[i] =
        __floats2half2_rn(c.cos_table[c.table_offset[0] + i], c.sin_table[c.table_offset[0] + i]);
  }
}

// A radius or code of a region in the codec's layout (c.pairs: pair_layout.h's places; the pairs
// layout has 32 slots, fp16 radii, and codes that may straddle a byte but not a record).
__device__ __forceinline__ float region_radius(const DeviceCodec& c, const uint8_t* region,
                                               int block, int slot) {
  if (c.pairs) {
    const uint8_t* p = region + pair_layout::radius_byte(c.dim, c.levels, slot, block);
    return __half2float(__ushort_as_half(*reinterpret_cast<const unsigned short*>(p)));
  }
  const uint8_t* p = region + c.radii_offset +
                     (static_cast<uint32_t>(block) * c.page_tokens + slot) * c.radius_bytes;
  if (c.radius_kind == 2) return *reinterpret_cast<const float*>(p);
  const unsigned short bits = *reinterpret_cast<const unsigned short*>(p);
  if (c.radius_kind == 0) return __half2float(__ushort_as_half(bits));
  return __bfloat162float(__ushort_as_bfloat16(bits));
}

// Level-l (1-based) field of `node` inside a head region.
__device__ __forceinline__ const uint8_t* level_field(const DeviceCodec& c, const uint8_t* region,
                                                      int level, int node) {
  return region + c.level_offset[level - 1] +
         static_cast<uint32_t>(node) * c.field_bytes[level - 1];
}

template <int B>
__device__ __forceinline__ unsigned unit_code(const DeviceCodec& c, const uint8_t* region,
                                              int level, int node, int slot) {
  if (c.pairs) {
    const int bit = pair_layout::code_bit(c.dim, c.levels, level, node, slot);
    const int bits = c.bits[level - 1];
    unsigned wide = region[bit >> 3];
    if ((bit & 7) + bits > 8) wide |= static_cast<unsigned>(region[(bit >> 3) + 1]) << 8;
    return (wide >> (bit & 7)) & ((1u << bits) - 1u);
  }
  return field_code<B>(level_field(c, region, level, node), slot, c.bits[level - 1]);
}

// One level l <= 4 of a unit, top-down in place: v[0 .. 2^(4-l)) are the level's radii on
// entry and v[0 .. 2^(5-l)) its children on exit (j descending, as in polar_inverse).
template <int L, int B>
__device__ __forceinline__ void decode_level(const DeviceCodec& c, const uint8_t* region,
                                             const float* cos_t, const float* sin_t, int slot,
                                             int u, float v[16]) {
  constexpr int kNodes = 1 << (4 - L);
#pragma unroll
  for (int j = kNodes - 1; j >= 0; --j) {
    const unsigned code = unit_code<B>(c, region, L, (u << (4 - L)) + j, slot);
    const int e = c.table_offset[L - 1] + code;
    const float rho = v[j];
    v[2 * j] = rho * cos_t[e];
    v[2 * j + 1] = rho * sin_t[e];
  }
}

// Decodes rotated coordinates [16u, 16u + 16) of token `slot` of a head region into v, with the
// same multiplications in the same order as PolarCodec::dequantize_rotated (so the values are
// bit-identical to the CPU's). cos_t / sin_t: the codec's tables (shared or global memory).
template <int B1, int B2, int B3, int B4>
__device__ __forceinline__ void decode_unit(const DeviceCodec& c, const uint8_t* region,
                                            const float* cos_t, const float* sin_t, int slot, int u,
                                            float v[16]) {
  const int L = c.levels;
  float r = region_radius(c, region, u >> (L - 4), slot);
  for (int l = L; l > 4; --l) {  // the path from the block radius down to this unit
    const unsigned code = unit_code<0>(c, region, l, u >> (l - 4), slot);
    const int side = (u >> (l - 5)) & 1;
    const int e = c.table_offset[l - 1] + code;
    r = r * (side ? sin_t[e] : cos_t[e]);
  }
  v[0] = r;
  decode_level<4, B4>(c, region, cos_t, sin_t, slot, u, v);
  decode_level<3, B3>(c, region, cos_t, sin_t, slot, u, v);
  decode_level<2, B2>(c, region, cos_t, sin_t, slot, u, v);
  decode_level<1, B1>(c, region, cos_t, sin_t, slot, u, v);
}

}  // namespace polarquant::cuda
