// How one codec's codes are laid out inside a cache page. A page holds `page_tokens` token slots of
// one KV head (a "head region", head_bytes() long, 64-byte aligned). The cache places the regions
// of one head's consecutive pages of a slab (up to kMaxSlabPages pages, see kv_cache_impl.h) next
// to each other, so reading one head's context is a few long streams.
//
// Two layouts (byte-level description and version in docs/FORMAT.md section 4):
//  - GenericPageFormat: the codec's own groups, one after another (group_size() tokens each). Used
//    for every codec, and read directly by the fused fp16/fp32 kernels (their groups are rows).
//  - PolarPageFormat: structure-of-arrays with tokens fastest, for the fused PolarQuant kernels.
#pragma once

#include <polarquant/codec.h>
#include <polarquant/polar_codec.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace polarquant {

inline constexpr uint32_t kPageLayoutVersion = 1;
inline constexpr size_t kPageAlignment = 64;

inline size_t round_up(size_t x, size_t multiple) {
  return (x + multiple - 1) / multiple * multiple;
}

class PageFormat {
 public:
  PageFormat(const Codec& codec, int page_tokens) : codec_(codec), page_tokens_(page_tokens) {}
  virtual ~PageFormat() = default;

  const Codec& codec() const { return codec_; }
  int page_tokens() const { return page_tokens_; }
  // Bytes of one head's region (a multiple of kPageAlignment).
  size_t head_bytes() const { return head_bytes_; }

  // Encodes n tokens (x: n x n_heads x dim, token-major) into slots [slot, slot + n) of the head
  // regions at page + h * head_stride. slot and n are multiples of the codec's group size; slot + n
  // <= page_tokens. The slots must be zero (fresh page); x must be finite (checked by the caller).
  virtual void store(const float* x, size_t n, int n_heads, uint8_t* page, size_t head_stride,
                     size_t slot) const = 0;
  // Decodes slots [slot, slot + n) of one head region into out (n x dim). slot and n: group
  // multiples.
  virtual void load(const uint8_t* region, size_t slot, size_t n, float* out) const = 0;

 protected:
  const Codec& codec_;
  int page_tokens_;
  size_t head_bytes_ = 0;
};

class GenericPageFormat final : public PageFormat {
 public:
  GenericPageFormat(const Codec& codec, int page_tokens);
  void store(const float* x, size_t n, int n_heads, uint8_t* page, size_t head_stride,
             size_t slot) const override;
  void load(const uint8_t* region, size_t slot, size_t n, float* out) const override;
  // Byte offset of the group holding token slot `slot` inside a head region.
  size_t group_offset(size_t slot) const {
    return slot / codec_.group_size() * codec_.group_bytes();
  }
};

// Bit position of slot t's code inside a field of b-bit codes. Fields are cut into groups of 16
// slots (2b bytes each). For b in {1, 2, 4, 8} the group is lane-interleaved: slot i of a group
// sits in byte i mod 2b at bit b * (i div 2b), so one broadcast load, one byte-to-lane widening and
// one variable shift put the 16 codes into 16 SIMD lanes. Other widths are packed LSB first (slot t
// at bits [t*b, (t+1)*b)) and may straddle a byte boundary.
inline bool interleaved_codes(int bits) {
  return bits == 1 || bits == 2 || bits == 4 || bits == 8;
}
inline size_t code_bit(size_t t, int bits) {
  const size_t b = static_cast<size_t>(bits);
  if (!interleaved_codes(bits)) return t * b;
  const size_t group = t / 16, i = t % 16;
  return (group * 2 * b + i % (2 * b)) * 8 + b * (i / (2 * b));
}
// A code of `bits` <= 8 bits at bit offset `bit` of p (LSB first; it may straddle two bytes, and
// the second byte is touched only then). or_bits ORs one in: fresh pages are zero.
inline unsigned read_bits(const uint8_t* p, size_t bit, int bits) {
  unsigned wide = p[bit / 8];
  if (bit % 8 + bits > 8) wide |= static_cast<unsigned>(p[bit / 8 + 1]) << 8;
  return (wide >> (bit % 8)) & ((1u << bits) - 1u);
}
inline void or_bits(uint8_t* p, size_t bit, int bits, unsigned code) {
  const unsigned wide = code << (bit % 8);
  p[bit / 8] = static_cast<uint8_t>(p[bit / 8] | (wide & 0xffu));
  if (bit % 8 + bits > 8) p[bit / 8 + 1] = static_cast<uint8_t>(p[bit / 8 + 1] | (wide >> 8));
}
inline unsigned read_code(const uint8_t* field, size_t t, int bits) {
  return read_bits(field, code_bit(t, bits), bits);
}

// Offsets of the fields of one head's region in a PolarQuant page of T tokens.
struct PolarPageLayout {
  int page_tokens = 0;
  int radius_bytes = 0;              // 2 (fp16/bf16) or 4 (fp32) per radius
  size_t radii_offset = 0;           // num_radii fields of T radii
  std::vector<size_t> level_offset;  // level l (index l-1): (dim >> l) fields of T codes
  std::vector<size_t> field_bytes;   // level l (index l-1): T * bits_l / 8 bytes per field
  size_t used_bytes = 0;             // end of the last field
  size_t head_bytes = 0;             // used_bytes + 8 slack bytes, rounded up to 64

  // The address of field `node` of level `level` (1-based).
  const uint8_t* level_field(const uint8_t* region, int level, int node) const {
    return region + level_offset[level - 1] + static_cast<size_t>(node) * field_bytes[level - 1];
  }
  uint8_t* level_field(uint8_t* region, int level, int node) const {
    return region + level_offset[level - 1] + static_cast<size_t>(node) * field_bytes[level - 1];
  }
};

PolarPageLayout make_polar_page_layout(const PolarConfig& config, int page_tokens);

class PolarPageFormat final : public PageFormat {
 public:
  // page_tokens must be a multiple of 16 (one SIMD lane per token); throws InvalidArgument.
  PolarPageFormat(const PolarCodec& codec, int page_tokens);
  void store(const float* x, size_t n, int n_heads, uint8_t* page, size_t head_stride,
             size_t slot) const override;
  void load(const uint8_t* region, size_t slot, size_t n, float* out) const override;

  const PolarCodec& polar() const { return polar_; }
  const PolarPageLayout& layout() const { return layout_; }
  // Codes and radii of slots [slot, slot + n) of one head, in quantize_rotated's order.
  void unpack(const uint8_t* region, size_t slot, size_t n, uint8_t* indices, float* radii) const;

 private:
  const PolarCodec& polar_;
  PolarPageLayout layout_;
};

// The fused-kernel-friendly format for the codec: PolarPageFormat for PolarCodec (when page_tokens
// suits it), GenericPageFormat otherwise.
std::unique_ptr<PageFormat> make_page_format(const Codec& codec, int page_tokens);

}  // namespace polarquant
