// The GPU's pairs page layout of `paper` and `polar37` (src/cache/pair_layout.h, docs/FORMAT.md
// section 4.1): every code and radius has its own place, the conversion round-trips, and a
// hand-placed code lands where the format says. Runs on the CPU (CI has no GPU); the CUDA suite
// holds the GPU encoder and conversion to these.
#include <gtest/gtest.h>
#include <polarquant/error.h>
#include <polarquant/polar_codec.h>

#include <cstdint>
#include <random>
#include <vector>

#include "cache/page_format.h"
#include "cache/pair_layout.h"

namespace polarquant {
namespace {

PolarConfig preset(const char* name, int dim) {
  PolarConfig c = polar_preset(name, dim);
  c.rotation = RotationKind::kHadamard;
  return c;
}
PolarConfig paper(int dim) {
  return preset("paper", dim);
}
constexpr const char* kPresets[] = {"paper", "polar37"};

// Host-layout pages of random vectors: `pages` pages of n_kv heads, the last one `tail` tokens.
std::vector<uint8_t> host_pages(const PolarCodec& codec, int n_kv, size_t pages, size_t tail) {
  const PolarPageFormat format(codec, pair_layout::kTokens);
  const int dim = codec.config().dim;
  std::vector<uint8_t> bytes(pages * n_kv * format.head_bytes(), 0);
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  for (size_t p = 0; p < pages; ++p) {
    const size_t n = p + 1 == pages ? tail : pair_layout::kTokens;
    std::vector<float> x(n * n_kv * dim);
    for (float& v : x) v = normal(rng);
    format.store(x.data(), n, n_kv, bytes.data() + p * n_kv * format.head_bytes(),
                 format.head_bytes(), 0);
  }
  return bytes;
}

TEST(PairLayout, EveryCodeAndRadiusHasItsOwnBitsInsideTheRegion) {
  for (const char* name : kPresets) {
    for (const int dim : {64, 128, 256}) {
      const PolarConfig config = preset(name, dim);
      const int levels = config.levels;
      const size_t bits = 8 * pair_layout::region_bytes(dim);
      std::vector<int> owner(bits, 0);
      size_t used = 0;
      const auto claim = [&](size_t first, int width) {
        for (int b = 0; b < width; ++b) {
          ASSERT_LT(first + b, bits) << name << " dim " << dim;
          ASSERT_EQ(0, owner[first + b]++) << name << " dim " << dim << ": bit " << first + b;
          ++used;
        }
      };
      for (int slot = 0; slot < pair_layout::kTokens; ++slot) {
        for (int r = 0; r < (dim >> levels); ++r) {
          claim(8 * pair_layout::radius_byte(dim, levels, slot, r), 16);
        }
        for (int level = 1; level <= levels; ++level) {
          for (int node = 0; node < (dim >> level); ++node) {
            claim(pair_layout::code_bit(dim, levels, level, node, slot), config.bits[level - 1]);
          }
        }
      }
      EXPECT_EQ(used, pair_layout::kTokens * config.payload_bits()) << name << " dim " << dim;
    }
  }
}

TEST(PairLayout, PagesRoundTripAndKeepEveryCodeAndRadius) {
  for (const char* name : kPresets) {
    for (const int dim : {64, 128, 256}) {
      const PolarConfig config = preset(name, dim);
      const int levels = config.levels;
      const PolarCodec codec(config);
      const int n_kv = 3;
      const size_t pages = 3;
      const std::vector<uint8_t> host = host_pages(codec, n_kv, pages, 17);
      const size_t pair_bytes = pair_layout::region_bytes(dim);
      std::vector<uint8_t> pairs(pages * n_kv * pair_bytes, 0xAB), back(host.size(), 0xCD);
      pages_to_pair_layout(config, n_kv, host.data(), pairs.data(), pages);
      pages_from_pair_layout(config, n_kv, pairs.data(), back.data(), pages);
      EXPECT_TRUE(back == host) << name << " dim " << dim << ": host -> pairs -> host changed";

      // Independently of the conversion: each code and radius read from the pairs page through
      // pair_layout's positions equals the host page's, for every token.
      const PolarPageFormat format(codec, pair_layout::kTokens);
      const PolarPageLayout& lay = format.layout();
      size_t checked = 0;
      for (size_t r = 0; r < pages * n_kv; ++r) {
        const uint8_t* h = host.data() + r * format.head_bytes();
        const uint8_t* p = pairs.data() + r * pair_bytes;
        for (int slot = 0; slot < pair_layout::kTokens; ++slot) {
          for (int b = 0; b < (dim >> levels); ++b) {
            const size_t at = lay.radii_offset + (static_cast<size_t>(b) * 32 + slot) * 2;
            const int pat = pair_layout::radius_byte(dim, levels, slot, b);
            ASSERT_EQ(h[at] | h[at + 1] << 8, p[pat] | p[pat + 1] << 8) << "radius " << slot;
          }
          for (int level = 1; level <= levels; ++level) {
            const int w = config.bits[level - 1];
            for (int node = 0; node < (dim >> level); ++node) {
              const unsigned want = read_code(lay.level_field(h, level, node), slot, w);
              const int bit = pair_layout::code_bit(dim, levels, level, node, slot);
              ASSERT_EQ(want, read_bits(p, bit, w))
                  << name << " dim " << dim << " level " << level << " node " << node;
              ++checked;
            }
          }
        }
      }
      EXPECT_EQ(checked, pages * n_kv * 32 * static_cast<size_t>(dim - (dim >> levels)));
    }
  }
}

// FORMAT.md section 4.1 by hand: token 13 (group 0, pair q = 1 + 4 = 5, side 1) at d = 128.
// Block u = 2 has swizzle 2, so the record is 16 * (2 * 8 + (5 ^ 2)) = 368; its level-1 pair 6 is
// byte 8 + 6 = 14, high nibble; level 3's node 1 of the block (node 5 of the vector) nibble 2 of
// word 1, bits 2..3 of the nibble.
TEST(PairLayout, AHandPlacedCodeLandsWhereTheFormatSays) {
  EXPECT_EQ(368, pair_layout::record_of(128, 13, 2));
  EXPECT_EQ(8 * (368 + 14) + 4, pair_layout::code_bit(128, 4, 1, 2 * 8 + 6, 13));
  EXPECT_EQ(8 * 368 + 32 + 4 * 2 + 2, pair_layout::code_bit(128, 4, 3, 5, 13));
  EXPECT_EQ(368 + 2, pair_layout::radius_byte(128, 4, 13, 2));
  // polar37: level 3's node 5 is field 2 at bits 12..17, b's code at 15; level 5's node 1 (blocks
  // 2, 3) is block 2's share (bits 42..47); token 13's radius of superblock 1 is in block 4 + 1 =
  // 5's record (swizzle 5: 16 * (5 * 8 + (5 ^ 5)) = 640), bytes 6..7.
  EXPECT_EQ(8 * 368 + 12 + 3, pair_layout::code_bit(128, 6, 3, 5, 13));
  EXPECT_EQ(8 * 368 + 42 + 3, pair_layout::code_bit(128, 6, 5, 1, 13));
  EXPECT_EQ(640 + 6, pair_layout::radius_byte(128, 6, 13, 1));
  // Group 1, token 16 + 8 = 24: pair q = 4, side 0, block 0: record 16 * (8 * 8 + 4).
  EXPECT_EQ(16 * 68, pair_layout::record_of(128, 24, 0));
}

TEST(PairLayout, RefusesCodecsWithoutThePairsShapeByName) {
  const PolarConfig other = polar_preset("polar39", 128);
  std::vector<uint8_t> a(4096), b(4096);
  try {
    pages_to_pair_layout(other, 1, a.data(), b.data(), 1);
    FAIL() << "polar39 has no pairs layout";
  } catch (const Error& e) {
    EXPECT_EQ(ErrorKind::kInvalidArgument, e.kind());
    EXPECT_NE(std::string(e.what()).find("polar39"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(has_pair_layout(paper(128), 64));
  EXPECT_TRUE(has_pair_layout(preset("polar37", 256), 32));
  EXPECT_TRUE(has_pair_layout(paper(64), 32));
}

}  // namespace
}  // namespace polarquant
