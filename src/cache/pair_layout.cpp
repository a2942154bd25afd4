// Host conversion between the host page layout and the GPU's pairs layout (pair_layout.h).
#include "cache/pair_layout.h"

#include <polarquant/error.h>
#include <polarquant/polar_codec.h>

#include <cstring>
#include <string>
#include <vector>

#include "cache/page_format.h"

namespace polarquant {

bool has_pair_layout(const PolarConfig& config, int page_tokens) {
  const std::vector<int> paper = {4, 2, 2, 2}, polar37 = {4, 3, 3, 3, 3, 3};
  return (config.bits == paper || config.bits == polar37) &&
         config.levels == static_cast<int>(config.bits.size()) &&
         config.radius == RadiusPrecision::kFp16 && page_tokens == pair_layout::kTokens &&
         (config.dim == 64 || config.dim == 128 || config.dim == 256);
}

namespace {

// Where one token's radius or code lies in each layout, as (byte or bit offset in the host
// region, offset in the pairs region): visit(kind, host, pairs, width) with kind 0 a 2-byte
// radius (byte offsets), kind 1 a `width`-bit code (bit offsets).
template <class Visit>
void for_each_value(const PolarConfig& config, const PolarPageLayout& host, Visit&& visit) {
  const int dim = config.dim, levels = config.levels;
  for (int slot = 0; slot < pair_layout::kTokens; ++slot) {
    for (int r = 0; r < (dim >> levels); ++r) {
      visit(0, host.radii_offset + (static_cast<size_t>(r) * pair_layout::kTokens + slot) * 2,
            static_cast<size_t>(pair_layout::radius_byte(dim, levels, slot, r)), 16);
    }
    for (int level = 1; level <= levels; ++level) {
      const int bits = config.bits[level - 1];
      for (int node = 0; node < (dim >> level); ++node) {
        const size_t field = host.level_offset[level - 1] + node * host.field_bytes[level - 1];
        visit(1, 8 * field + code_bit(slot, bits),
              static_cast<size_t>(pair_layout::code_bit(dim, levels, level, node, slot)), bits);
      }
    }
  }
}

void convert(const PolarConfig& config, int n_kv_heads, const uint8_t* src, uint8_t* dst,
             size_t count, bool to_pairs, const char* caller) {
  if (!has_pair_layout(config, pair_layout::kTokens)) {
    throw_invalid(std::string(caller) + ": codec '" + config.name + "' (dim " +
                  std::to_string(config.dim) +
                  ") has no pairs layout: it needs the `paper` or `polar37` shape (bits 4/2/2/2 "
                  "or 4/3/3/3/3/3, fp16 radii) and head_dim 64, 128 or 256");
  }
  if (n_kv_heads < 1) throw_invalid(std::string(caller) + ": n_kv_heads must be >= 1");
  if (count > 0 && (src == nullptr || dst == nullptr)) {
    throw_invalid(std::string(caller) + ": null page pointer");
  }
  const PolarPageLayout host = make_polar_page_layout(config, pair_layout::kTokens);
  const size_t pair_bytes = pair_layout::region_bytes(config.dim);
  const size_t src_bytes = to_pairs ? host.head_bytes : pair_bytes;
  const size_t dst_bytes = to_pairs ? pair_bytes : host.head_bytes;
  for (size_t r = 0; r < count * static_cast<size_t>(n_kv_heads); ++r) {
    const uint8_t* in = src + r * src_bytes;
    uint8_t* out = dst + r * dst_bytes;
    std::memset(out, 0, dst_bytes);
    for_each_value(config, host, [&](int kind, size_t at_host, size_t at_pairs, int width) {
      const size_t from = to_pairs ? at_host : at_pairs, to = to_pairs ? at_pairs : at_host;
      if (kind == 0) {
        std::memcpy(out + to, in + from, 2);
      } else {
        or_bits(out, to, width, read_bits(in, from, width));
      }
    });
  }
}

}  // namespace

void pages_to_pair_layout(const PolarConfig& config, int n_kv_heads, const uint8_t* src,
                          uint8_t* dst, size_t count) {
  convert(config, n_kv_heads, src, dst, count, true, "pages_to_pair_layout");
}

void pages_from_pair_layout(const PolarConfig& config, int n_kv_heads, const uint8_t* src,
                            uint8_t* dst, size_t count) {
  convert(config, n_kv_heads, src, dst, count, false, "pages_from_pair_layout");
}

}  // namespace polarquant
