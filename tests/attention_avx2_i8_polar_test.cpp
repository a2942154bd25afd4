// The AVX2 integer score kernel for the generic allocations (docs/BENCHMARKS.md 2.5.7: L = 3..8,
// level 1 of 4 bits or of 5 bits with the half turn, e.g. polar4kv's keys polar-544444): held bit
// for bit to its scalar twin scalar_score_polar_i8, and its precision cost against the float
// scalar kernel bounded on the attention output, as attention_avx2_i8_test.cpp does for paper's.
#include <gtest/gtest.h>
#include <polarquant/polar_codec.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "attention/kernels.h"
#include "cache/page_format.h"
#include "i8_score_test_util.h"

namespace polarquant {
namespace {

using testing::gaussian;
using testing::I8Cost;
using testing::I8Pages;
using testing::make_i8_pages;

const std::vector<int> kKeys544444 = {5, 4, 4, 4, 4, 4};  // polar4kv's keys

TEST(AttentionAvx2I8Polar, MatchesItsScalarTwinBitForBit) {
  const KernelSet* avx2 = avx2_kernels();
  if (avx2 == nullptr) GTEST_SKIP() << "no AVX2 + FMA + F16C here";
  const std::vector<std::vector<int>> allocations = {
      kKeys544444,
      {4, 3, 3, 3, 3, 3},     // polar37
      {4, 4, 4, 4, 4, 4, 4},  // polar41
      {5, 2, 2, 2, 2, 2},
      {4, 3, 3, 3, 3},           // polar39
      {5, 3, 3},                 // L = 3: the level-3 node is the block
      {4, 3, 3, 3, 3, 3, 3, 3},  // L = 8
      {5, 4, 3, 4, 4, 4},        // upper widths read at run time
      {4, 4, 8},                 // and gathered (8 bits)
  };
  for (const auto& bits : allocations) {
    for (int dim : {64, 128, 256}) {
      if (dim % (1 << bits.size()) != 0) continue;
      for (auto radius : {RadiusPrecision::kFp16, RadiusPrecision::kBf16, RadiusPrecision::kFp32}) {
        for (int page_tokens : {32, 64}) {
          const I8Pages pages = make_i8_pages(dim, bits, radius, page_tokens, 1, 11);
          const uint8_t* region = pages.bytes[0].data();
          for (int g : {1, 2, 3, 4, 5, 8, 9}) {
            const auto q = gaussian(static_cast<size_t>(g) * dim, 12);
            PolarTables tables;
            build_polar_tables(*pages.format, q.data(), g, tables, true);
            ASSERT_TRUE(polar_i8_scores_apply(tables, g));
            for (size_t slot = 0; slot < static_cast<size_t>(page_tokens); slot += 16) {
              for (size_t n : {size_t{1}, size_t{9}, size_t{16}, size_t{17}, page_tokens - slot}) {
                if (slot + n > static_cast<size_t>(page_tokens)) continue;
                SCOPED_TRACE("L " + std::to_string(bits.size()) + " bits0 " +
                             std::to_string(bits[0]) + " dim " + std::to_string(dim) + " radius " +
                             std::to_string(static_cast<int>(radius)) + " page " +
                             std::to_string(page_tokens) + " g " + std::to_string(g) + " slot " +
                             std::to_string(slot) + " n " + std::to_string(n));
                std::vector<float> want(g * 64, -1.0f), got(g * 64, -1.0f);
                scalar_score_polar_i8(tables, region, slot, n, g, want.data(), 64);
                avx2->score_polar(tables, region, slot, n, g, got.data(), 64);
                for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(want[i], got[i]) << i;
              }
            }
          }
        }
      }
    }
  }
}

// A level-3 node's 4 products are added as int16 (bounded by 32512): keys that put a block's
// energy into one level-3 node, against queries along the largest table entries, take those sums
// near the bound; the int32 twin must still agree bit for bit.
TEST(AttentionAvx2I8Polar, NodeSumsNearTheInt16BoundMatchTheTwin) {
  const KernelSet* avx2 = avx2_kernels();
  if (avx2 == nullptr) GTEST_SKIP() << "no AVX2 + FMA + F16C here";
  const auto twin = testing::avx2_or_twin(nullptr, scalar_score_polar_i8);
  EXPECT_GT(testing::check_node_sums_near_the_bound(*avx2, kKeys544444, twin),
            0.5 * 32512);  // 25948 when written
}

// Integer scores (the twin, or the AVX2 set when given) against the float scalar kernel for
// polar4kv's keys (testing::i8_precision_cost). Llama-3-8B's heads: g = 4, d = 128; SmolLM2's:
// g = 3, d = 64.
I8Cost precision_cost(const KernelSet* avx2, int dim, int g, bool corrupt_table) {
  const auto scores = testing::avx2_or_twin(avx2, scalar_score_polar_i8);
  // Entry c of each pair read as entry c + 2: a table off by 1/16 turn (paper's test: one code).
  const auto corrupt = [](PolarTables& tables) {
    for (size_t i = 0; i + 16 <= tables.a1_i8_pair.size(); i += 16) {
      const int8_t first[2] = {tables.a1_i8_pair[i], tables.a1_i8_pair[i + 1]};
      for (int c = 0; c < 14; ++c) tables.a1_i8_pair[i + c] = tables.a1_i8_pair[i + c + 2];
      for (int c = 0; c < 2; ++c) tables.a1_i8_pair[i + 14 + c] = static_cast<int8_t>(-first[c]);
    }
  };
  return testing::i8_precision_cost(dim, g, kKeys544444, scores,
                                    corrupt_table ? corrupt : std::function<void(PolarTables&)>{});
}

// The bounds of the paper kernel's test (attention_avx2_i8_test.cpp): the same tolerance holds for
// polar4kv's keys. Measured when written: see the printed lines and docs/BENCHMARKS.md 2.5.7.
constexpr double kScoreNmseBound = 4e-4;
constexpr double kOutputNmseBound = 1e-3;

TEST(AttentionAvx2I8Polar, PrecisionCostAgainstTheFloatKernelIsBounded) {
  for (auto [dim, g] : {std::pair{128, 4}, std::pair{64, 3}}) {
    SCOPED_TRACE("dim " + std::to_string(dim) + " g " + std::to_string(g));
    const I8Cost twin = precision_cost(nullptr, dim, g, false);
    std::printf("d %d g %d: int8 scores against float: score NMSE %.3g, output NMSE %.3g\n", dim, g,
                twin.score_nmse, twin.output_nmse);
    std::printf(
        "d %d g %d: polar-544444's own error (float kernel against exact keys): score "
        "NMSE %.3g, output %.3g\n",
        dim, g, twin.codec_score_nmse, twin.codec_output_nmse);
    EXPECT_LT(twin.score_nmse, 0.05 * twin.codec_score_nmse);
    EXPECT_LT(twin.score_nmse, kScoreNmseBound);
    EXPECT_LT(twin.output_nmse, kOutputNmseBound);
    if (const KernelSet* avx2 = avx2_kernels()) {
      const I8Cost simd = precision_cost(avx2, dim, g, false);
      EXPECT_EQ(simd.score_nmse, twin.score_nmse);
      EXPECT_EQ(simd.output_nmse, twin.output_nmse);
    }
    const I8Cost wrong = precision_cost(nullptr, dim, g, true);
    std::printf("d %d g %d: with a table off by two codes: score NMSE %.3g, output NMSE %.3g\n",
                dim, g, wrong.score_nmse, wrong.output_nmse);
    EXPECT_GT(wrong.score_nmse, 100 * kScoreNmseBound);
    EXPECT_GT(wrong.output_nmse, 100 * kOutputNmseBound);
  }
}

}  // namespace
}  // namespace polarquant
