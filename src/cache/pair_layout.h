// The GPU page layout of the `paper` and `polar37` codecs ("pairs", docs/FORMAT.md section 4.1):
// one head region of a 32-token page cut into 16-byte *pair records*, each holding everything the
// decode kernel's lanes need for two tokens (s, s + 4) and one 16-coordinate block. A lane then
// reads its codes with one 16-byte load instead of gathering them from the fields of the host
// layout (section 4), and the records of the loads issued together fall in distinct shared-memory
// banks.
//
// Record (group g = s / 16, block u, pair q of the group) at byte 16 ((g * D/16 + u) * 8 + (q ^
// swizzle(u))), tokens a = 16 g + (q % 4) + 8 (q / 4) and b = a + 4 ("side" 0 and 1). `paper`
// (L = 4, bits 4/2/2/2):
//   word 0: block u's fp16 radius of a (bits 0..15) and of b (16..31);
//   word 1: the upper levels as nibbles (code of a) | (code of b) << 2: level 4 in nibble 0,
//           level 3 nodes j = 0, 1 in nibbles 1 + j, level 2 nodes j = 0..3 in nibbles 3 + j
//           (bits 28..31 zero);
//   words 2, 3: level 1, pair p = 0..7 of the block in byte p (word 2 + p / 4): (code of a) |
//           (code of b) << 4.
// `polar37` (L = 6, bits 4/3/3/3/3/3, one radius per 64-coordinate superblock of blocks 4k..4k+3):
//   bits 0..41: levels 4, 3, 2 as 6-bit fields (code of a) | (code of b) << 3, field n = 0 level
//           4, n = 1 + j level 3 node j, n = 3 + j level 2 node j, at bit 6n;
//   bits 42..47: the superblock's share j = u % 4 of the record: j = 0 level 6, j = 1, 2 level 5
//           node j - 1, each (code of a) | (code of b) << 3 (j = 3: zero);
//   bits 48..63: j = 0 the superblock's fp16 radius of a, j = 1 that of b (j = 2, 3: zero);
//   words 2, 3: level 1 as in `paper`.
// A region is 16 D bytes (the host layout's is 15.5 D + padding for `paper`, 14.8 D for `polar37`).
// The one definition of where a code or radius lives: the host conversion (pair_layout.cpp), the
// CUDA encoder, conversion, readers and decoders include this header. Two places also spell out
// `paper`'s record words for speed: the encoder's whole-word packer (pack_paper_pairs in
// encode_units.cu) and the decoders' shifts; the GPU tests hold both to the host conversion.
#pragma once

#include <cstddef>
#include <cstdint>

#ifdef __CUDACC__
#define POLARQUANT_HD __host__ __device__
#else
#define POLARQUANT_HD
#endif

namespace polarquant::pair_layout {

inline constexpr int kTokens = 32;  // page tokens
inline constexpr int kRecordBytes = 16;

POLARQUANT_HD constexpr size_t region_bytes(int dim) {
  return static_cast<size_t>(kRecordBytes) * dim;
}
// The record slot of pair q in block u's 128-byte line: the lanes that load records together (the
// kernel's K lanes: blocks u = 0..3, pairs q and q + 4; V lanes: blocks 2k, 2k + 1, pairs 0..3 or
// 4..7) hit eight distinct 16-byte bank groups.
POLARQUANT_HD constexpr int swizzle(int u) {
  return (u & 3) | ((u & 1) << 2);
}
POLARQUANT_HD constexpr int pair_of(int slot) {
  return (slot & 3) | (((slot >> 3) & 1) << 2);
}
POLARQUANT_HD constexpr int side_of(int slot) {
  return (slot >> 2) & 1;
}
// Byte offset of the record of pair q of group g, block u.
POLARQUANT_HD constexpr int record_at(int dim, int g, int u, int q) {
  return kRecordBytes * ((g * (dim / 16) + u) * 8 + (q ^ swizzle(u)));
}
POLARQUANT_HD constexpr int record_of(int dim, int slot, int u) {
  return record_at(dim, slot >> 4, u, pair_of(slot));
}
// Byte offset of the fp16 radius of token `slot` for radius block `block` (a 16-coordinate block
// with 4 levels, a 64-coordinate superblock with 6).
POLARQUANT_HD constexpr int radius_byte(int dim, int levels, int slot, int block) {
  if (levels == 4) return record_of(dim, slot, block) + 2 * side_of(slot);
  return record_of(dim, slot, 4 * block + side_of(slot)) + 6;
}
// Bit offset of the code of token `slot` at `level`, node `node` of the vector (the host layout's
// numbering: block u's nodes at level l <= 4 are u * 2^(4 - l) + j; level 5's node k covers blocks
// 2k, 2k + 1, level 6's node k blocks 4k .. 4k + 3).
POLARQUANT_HD constexpr int code_bit(int dim, int levels, int level, int node, int slot) {
  const int side = side_of(slot);
  if (level > 4) {  // polar37's superblock shares: level 6 in record 4k, level 5 node k in 2k + 1
    const int u = level == 6 ? 4 * node : 4 * (node >> 1) + 1 + (node & 1);
    return 8 * record_of(dim, slot, u) + 42 + 3 * side;
  }
  const int u = node >> (4 - level), j = node & ((1 << (4 - level)) - 1);
  const int base = 8 * record_of(dim, slot, u);
  if (level == 1) return base + 64 + 8 * j + 4 * side;
  const int field = level == 4 ? 0 : level == 3 ? 1 + j : 3 + j;
  return levels == 4 ? base + 32 + 4 * field + 2 * side : base + 6 * field + 3 * side;
}

}  // namespace polarquant::pair_layout

namespace polarquant {

struct PolarConfig;
class PolarCodec;

// True when the pairs layout exists for this codec and page size: `paper`'s shape (L = 4, bits
// 4/2/2/2) or `polar37`'s (L = 6, bits 4/3/3/3/3/3), fp16 radii, 32-token pages, head_dim 64, 128
// or 256.
bool has_pair_layout(const PolarConfig& config, int page_tokens);

// Rewrites `count` pages of n_kv_heads head regions between the host layout (PolarPageFormat:
// regions of make_polar_page_layout(config, 32).head_bytes) and the pairs layout (regions of
// pair_layout::region_bytes(dim)); src and dst must not overlap. Every code and radius moves, the
// padding is zero. Throws Error(kInvalidArgument) unless has_pair_layout(config, 32).
void pages_to_pair_layout(const PolarConfig& config, int n_kv_heads, const uint8_t* src,
                          uint8_t* dst, size_t count);
void pages_from_pair_layout(const PolarConfig& config, int n_kv_heads, const uint8_t* src,
                            uint8_t* dst, size_t count);

}  // namespace polarquant
