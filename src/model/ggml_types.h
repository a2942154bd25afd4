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
  kQ5_0 = 6,
  kQ8_0 = 8,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kBF16 = 30,
};

inline constexpr int kQuantBlock = 32;   // values per block of the Q4_0/Q4_1/Q5_0/Q8_0 types
inline constexpr int kSuperBlock = 256;  // values per super-block of the K-quant types (QK_K)

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
struct BlockQ5_0 {
  uint16_t d;      // fp16 scale
  uint8_t qh[4];   // bit j of the little-endian uint32: 5th bit of value j
  uint8_t qs[16];  // low nibbles as in Q4_0; x = d*(q-16)
};
// K-quants (ggml-common.h): 256 values in 8 sub-blocks of 32 with 6-bit scales and mins packed in
// 12 bytes (Q4_K/Q5_K), or 16 sub-blocks of 16 with int8 scales (Q6_K).
struct BlockQ4_K {
  uint16_t d;          // fp16 super-block scale of the scales
  uint16_t dmin;       // fp16 super-block scale of the mins
  uint8_t scales[12];  // 8 6-bit scales and 8 6-bit mins
  uint8_t qs[128];     // 4-bit values; x = d*sc*q - dmin*m
};
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qh[32];   // 5th bits
  uint8_t qs[128];  // low nibbles
};
struct BlockQ6_K {
  uint8_t ql[128];    // low 4 bits
  uint8_t qh[64];     // high 2 bits
  int8_t scales[16];  // 8-bit sub-block scales
  uint16_t d;         // fp16 super-block scale; x = d*sc*(q-32)
};
static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ5_0) == 22);
static_assert(sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176);
static_assert(sizeof(BlockQ6_K) == 210);
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
// building synthetic weights; F32/F16/BF16 store the values. The types only read from files
// (Q5_0 and the K-quants) throw Unsupported.
void quantize_row_ref(GgmlType type, const float* x, uint8_t* row, int64_t n);

namespace detail {
// Scalar decoders of the types added for Gemma 3 (ggml_kquants.cpp); nb is the number of blocks.
void dequantize_q5_0(const uint8_t* row, float* out, int64_t nb);
void dequantize_q4_k(const uint8_t* row, float* out, int64_t nb);
void dequantize_q5_k(const uint8_t* row, float* out, int64_t nb);
void dequantize_q6_k(const uint8_t* row, float* out, int64_t nb);
}  // namespace detail

}  // namespace polarquant::model
