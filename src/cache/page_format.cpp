#include "cache/page_format.h"

#include <polarquant/error.h>
#include <polarquant/half.h>

#include <cstring>
#include <string>

namespace polarquant {

GenericPageFormat::GenericPageFormat(const Codec& codec, int page_tokens)
    : PageFormat(codec, page_tokens) {
  const int group = codec.group_size();
  if (group < 1 || page_tokens % group != 0) {
    throw_invalid("KvCache: page_tokens " + std::to_string(page_tokens) +
                  " is not a multiple of codec '" + codec.name() + "' group size " +
                  std::to_string(group));
  }
  head_bytes_ =
      round_up(static_cast<size_t>(page_tokens / group) * codec.group_bytes(), kPageAlignment);
}

void GenericPageFormat::store(const float* x, size_t n, int n_heads, uint8_t* page,
                              size_t head_stride, size_t slot) const {
  const size_t dim = static_cast<size_t>(codec_.dim());
  const size_t group = static_cast<size_t>(codec_.group_size());
  std::vector<float> rows(group * dim);
  for (int h = 0; h < n_heads; ++h) {
    uint8_t* region = page + static_cast<size_t>(h) * head_stride;
    for (size_t g = 0; g < n; g += group) {
      for (size_t t = 0; t < group; ++t) {
        std::memcpy(&rows[t * dim], x + ((g + t) * n_heads + h) * dim, dim * sizeof(float));
      }
      codec_.encode(rows.data(), 1, region + group_offset(slot + g));
    }
  }
}

void GenericPageFormat::load(const uint8_t* region, size_t slot, size_t n, float* out) const {
  codec_.decode(region + group_offset(slot), n / codec_.group_size(), out);
}

PolarPageLayout make_polar_page_layout(const PolarConfig& config, int page_tokens) {
  const PolarShape shape = make_polar_shape(config.dim, config.levels);
  PolarPageLayout layout;
  layout.page_tokens = page_tokens;
  layout.radius_bytes = polarquant::radius_bytes(config.radius);
  const size_t tokens = static_cast<size_t>(page_tokens);
  size_t offset = 0;
  layout.radii_offset = offset;
  offset += round_up(static_cast<size_t>(shape.num_radii()) * tokens * layout.radius_bytes, 16);
  for (int level = 1; level <= config.levels; ++level) {
    const size_t field = tokens * static_cast<size_t>(config.bits[level - 1]) / 8;
    layout.level_offset.push_back(offset);
    layout.field_bytes.push_back(field);
    offset += round_up(static_cast<size_t>(shape.angles_at(level)) * field, 16);
  }
  layout.used_bytes = offset;
  // The SIMD unpacker reads 8 bytes from the start of a 16-token group's second half; 8 slack
  // bytes keep that read inside the region for the last field.
  layout.head_bytes = round_up(offset + 8, kPageAlignment);
  return layout;
}

PolarPageFormat::PolarPageFormat(const PolarCodec& codec, int page_tokens)
    : PageFormat(codec, page_tokens), polar_(codec) {
  if (page_tokens < 16 || page_tokens % 16 != 0) {
    throw_invalid("KvCache: page_tokens " + std::to_string(page_tokens) + " does not suit codec '" +
                  codec.name() + "'; PolarQuant pages need a multiple of 16 tokens");
  }
  layout_ = make_polar_page_layout(codec.config(), page_tokens);
  head_bytes_ = layout_.head_bytes;
}

namespace {

// Codes are placed by code_bit (page_format.h); fresh pages are zero, so OR-ing stores them.
void put_code(uint8_t* field, size_t t, int bits, unsigned code) {
  or_bits(field, code_bit(t, bits), bits, code);
}

}  // namespace

void PolarPageFormat::store(const float* x, size_t n, int n_heads, uint8_t* page,
                            size_t head_stride, size_t slot) const {
  const PolarShape& shape = polar_.shape();
  const PolarConfig& config = polar_.config();
  const size_t dim = static_cast<size_t>(shape.dim);
  const size_t vectors = n * static_cast<size_t>(n_heads);
  const size_t num_angles = static_cast<size_t>(shape.num_angles());
  const size_t num_radii = static_cast<size_t>(shape.num_radii());
  std::vector<float> rotated(vectors * dim);
  std::vector<uint8_t> indices(vectors * num_angles);
  std::vector<float> radii(vectors * num_radii);
  polar_.rotation().forward(x, rotated.data(), vectors);
  polar_.quantize_rotated(rotated.data(), vectors, indices.data(), radii.data());
  for (size_t t = 0; t < n; ++t) {
    for (int h = 0; h < n_heads; ++h) {
      const size_t v = t * n_heads + h;
      uint8_t* region = page + static_cast<size_t>(h) * head_stride;
      const size_t s = slot + t;
      for (size_t b = 0; b < num_radii; ++b) {
        store_radius(region + layout_.radii_offset + (b * page_tokens_ + s) * layout_.radius_bytes,
                     radii[v * num_radii + b], config.radius);
      }
      for (int level = 1; level <= shape.levels; ++level) {
        const int bits = config.bits[level - 1];
        const uint8_t* codes = &indices[v * num_angles + shape.offset_of(level)];
        for (int node = 0; node < shape.angles_at(level); ++node) {
          put_code(layout_.level_field(region, level, node), s, bits, codes[node]);
        }
      }
    }
  }
}

void PolarPageFormat::unpack(const uint8_t* region, size_t slot, size_t n, uint8_t* indices,
                             float* radii) const {
  const PolarShape& shape = polar_.shape();
  const PolarConfig& config = polar_.config();
  const size_t num_angles = static_cast<size_t>(shape.num_angles());
  const size_t num_radii = static_cast<size_t>(shape.num_radii());
  for (size_t t = 0; t < n; ++t) {
    const size_t s = slot + t;
    for (size_t b = 0; b < num_radii; ++b) {
      radii[t * num_radii + b] =
          load_radius(region + layout_.radii_offset + (b * page_tokens_ + s) * layout_.radius_bytes,
                      config.radius);
    }
    for (int level = 1; level <= shape.levels; ++level) {
      const int bits = config.bits[level - 1];
      uint8_t* codes = &indices[t * num_angles + shape.offset_of(level)];
      for (int node = 0; node < shape.angles_at(level); ++node) {
        codes[node] =
            static_cast<uint8_t>(read_code(layout_.level_field(region, level, node), s, bits));
      }
    }
  }
}

void PolarPageFormat::load(const uint8_t* region, size_t slot, size_t n, float* out) const {
  const PolarShape& shape = polar_.shape();
  std::vector<uint8_t> indices(n * shape.num_angles());
  std::vector<float> radii(n * shape.num_radii());
  unpack(region, slot, n, indices.data(), radii.data());
  std::vector<float> rotated(n * shape.dim);
  polar_.dequantize_rotated(indices.data(), radii.data(), n, rotated.data());
  polar_.rotation().inverse(rotated.data(), out, n);
}

std::unique_ptr<PageFormat> make_page_format(const Codec& codec, int page_tokens) {
  if (const auto* polar = dynamic_cast<const PolarCodec*>(&codec)) {
    return std::make_unique<PolarPageFormat>(*polar, page_tokens);
  }
  return std::make_unique<GenericPageFormat>(codec, page_tokens);
}

}  // namespace polarquant
