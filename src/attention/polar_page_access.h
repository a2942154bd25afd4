// Scalar access to single fields of a PolarQuant page region (layout: docs/FORMAT.md section 4),
// shared by the scalar kernels and the table builder.
#pragma once

#include <polarquant/half.h>
#include <polarquant/polar_codec.h>

#include <cstring>

#include "cache/page_format.h"

namespace polarquant {

inline float polar_radius(const PolarPageLayout& layout, RadiusPrecision precision,
                          const uint8_t* region, int block, size_t slot) {
  const uint8_t* p = region + layout.radii_offset +
                     (static_cast<size_t>(block) * layout.page_tokens + slot) * layout.radius_bytes;
  return load_radius(p, precision);
}

inline unsigned polar_code(const PolarPageLayout& layout, const uint8_t* region, int level,
                           int node, size_t slot, int bits) {
  return read_code(layout.level_field(region, level, node), slot, bits);
}

}  // namespace polarquant
