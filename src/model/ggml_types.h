// The ggml tensor types the runtime reads (GGUF type ids), their block layouts, and the scalar
// reference dequantization and dot product of one row. Block structs mirror ggml's byte layout
// exactly (checked by static_assert); fp16 fields are kept as raw bits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace polarquant::model {

enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ8_0 = 8,
  kBF16 = 30,
};

inline constexpr int kQuantBlock = 32;  // values per block of every Q* type here

struct BlockQ4_0 {
  uint16_t d;      // fp16 scale
  uint8_t qs[16];  // value j: low nibble of qs[j] (j < 16) or high nibble of qs[j-16]; x = d*(q-8)
};
struct BlockQ4_1 {
  uint16_t d;  // fp16 scale
  uint16_t m;  // fp16 minimum; x = d*q + m
  uint8_t qs[16];
};
struct BlockQ8_0 {
  uint16_t d;  // fp16 scale; x = d*q
  int8_t qs[32];
};
static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ8_0) == 34);

struct TypeInfo {
  const char* name;
  int block_size;      // values per block
  size_t block_bytes;  // bytes per block
};

// Throws Unsupported naming the id for a type this runtime cannot read.
TypeInfo type_info(uint32_t type_id);
bool is_supported_type(uint32_t type_id);
std::string type_name(uint32_t type_id);  // "F32", ..., or "type#<id>"

// Bytes of a row of n values; throws InvalidArgument when n is not a multiple of the block size.
size_t row_bytes(GgmlType type, int64_t n);

// Scalar references: decode n values (n a multiple of the block size) of one row to floats, and
// the dot product of one row with x, accumulated in double for a tight reference.
void dequantize_row_ref(GgmlType type, const uint8_t* row, float* out, int64_t n);
double dot_row_ref(GgmlType type, const uint8_t* row, const float* x, int64_t n);

// Quantizes n floats to a row of the type (scalar, ggml's reference rounding). For tests and for
// building synthetic weights; F32/F16/BF16 store the values.
void quantize_row_ref(GgmlType type, const float* x, uint8_t* row, int64_t n);

}  // namespace polarquant::model
