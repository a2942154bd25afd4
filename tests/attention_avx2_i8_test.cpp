// The AVX2 integer score kernel for paper pages (docs/BENCHMARKS.md 2.5.4): held bit for bit to
// its scalar twin scalar_score_paper_i8, and its precision cost against the float scalar kernel
// bounded on the attention output: softmax over the scores of 512 tokens, then the probabilities
// times random values, NMSE against the same with the float scores. A table with one wrong entry
// per pair fails that bound by orders of magnitude (checked below, so the bound means something).
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

TEST(AttentionAvx2I8, MatchesItsScalarTwinBitForBit) {
  const KernelSet* avx2 = avx2_kernels();
  if (avx2 == nullptr) GTEST_SKIP() << "no AVX2 + FMA + F16C here";
  for (int dim : {64, 128, 256}) {
    for (auto radius : {RadiusPrecision::kFp16, RadiusPrecision::kBf16, RadiusPrecision::kFp32}) {
      for (int page_tokens : {32, 64}) {
        const I8Pages pages = make_i8_pages(dim, {4, 2, 2, 2}, radius, page_tokens, 1, 11);
        const uint8_t* region = pages.bytes[0].data();
        for (int g : {1, 2, 3, 4, 5, 8, 9}) {
          const auto q = gaussian(static_cast<size_t>(g) * dim, 12);
          PolarTables tables;
          build_polar_tables(*pages.format, q.data(), g, tables, true);
          ASSERT_TRUE(tables.level1_half_turn);
          ASSERT_EQ(tables.a1_i8.size(), static_cast<size_t>(g) * dim / 4 * 16);
          for (size_t slot = 0; slot < static_cast<size_t>(page_tokens); slot += 16) {
            for (size_t n :
                 {size_t{1}, size_t{7}, size_t{8}, size_t{9}, size_t{16}, page_tokens - slot}) {
              if (slot + n > static_cast<size_t>(page_tokens)) continue;
              SCOPED_TRACE("dim " + std::to_string(dim) + " page " + std::to_string(page_tokens) +
                           " g " + std::to_string(g) + " slot " + std::to_string(slot) + " n " +
                           std::to_string(n));
              std::vector<float> want(g * 64, -1.0f), got(g * 64, -1.0f);
              scalar_score_paper_i8(tables, region, slot, n, g, want.data(), 64);
              avx2->score_polar(tables, region, slot, n, g, got.data(), 64);
              for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(want[i], got[i]) << "score " << i;
            }
          }
        }
      }
    }
  }
}

// The kernel adds the 4 products of a level-3 node as int16 (bounded by 32512, see the kernel):
// keys and queries that put all of a block's energy into one node, along the largest entries of
// the tables, bring those sums to ~70% of the bound (the level 2-4 codebooks keep the 4 factors
// unequal); the int32 twin must still agree bit for bit.
TEST(AttentionAvx2I8, NodeSumsNearTheInt16BoundMatchTheTwin) {
  const KernelSet* avx2 = avx2_kernels();
  if (avx2 == nullptr) GTEST_SKIP() << "no AVX2 + FMA + F16C here";
  const auto twin = testing::avx2_or_twin(nullptr, scalar_score_paper_i8);
  EXPECT_GT(testing::check_node_sums_near_the_bound(*avx2, {4, 2, 2, 2}, twin),
            0.65 * 32512);  // 22545 when written
}

// Integer scores (the twin, or the AVX2 set when given) against the float scalar kernel,
// Llama-3-8B's group of 4 query heads at d = 128 (testing::i8_precision_cost).
I8Cost precision_cost(const KernelSet* avx2, bool corrupt_table) {
  const auto scores = testing::avx2_or_twin(avx2, scalar_score_paper_i8);
  // Entry c of each pair read as entry c + 1: a table off by one code.
  const auto corrupt = [](PolarTables& tables) {
    for (size_t i = 0; i + 8 <= tables.a1_i8.size(); i += 8) {
      const int8_t first = tables.a1_i8[i];
      for (int c = 0; c < 7; ++c) tables.a1_i8[i + c] = tables.a1_i8[i + c + 1];
      tables.a1_i8[i + 7] = static_cast<int8_t>(-first);
    }
  };
  return testing::i8_precision_cost(128, 4, {4, 2, 2, 2}, scores,
                                    corrupt_table ? corrupt : std::function<void(PolarTables&)>{});
}

// Measured when written (any x86 CPU gives the same: the twin's arithmetic is exact up to its float
// steps): score NMSE 1.2e-4 of the scores' variance, attention output NMSE 2.8e-4; the paper
// codec's own error on the same keys (float kernel against unquantized keys) is printed beside it.
// The bounds leave a ~3x margin and sit two orders of magnitude under a table off by one code.
constexpr double kScoreNmseBound = 4e-4;
constexpr double kOutputNmseBound = 1e-3;

TEST(AttentionAvx2I8, PrecisionCostAgainstTheFloatKernelIsBounded) {
  const I8Cost twin = precision_cost(nullptr, false);
  RecordProperty("score_nmse", std::to_string(twin.score_nmse));
  RecordProperty("output_nmse", std::to_string(twin.output_nmse));
  std::printf("int8 scores against float: score NMSE %.3g, attention output NMSE %.3g\n",
              twin.score_nmse, twin.output_nmse);
  std::printf("paper's own error (float kernel against exact keys): score NMSE %.3g, output %.3g\n",
              twin.codec_score_nmse, twin.codec_output_nmse);
  EXPECT_LT(twin.score_nmse, 0.05 * twin.codec_score_nmse);
  EXPECT_LT(twin.score_nmse, kScoreNmseBound);
  EXPECT_LT(twin.output_nmse, kOutputNmseBound);
  if (const KernelSet* avx2 = avx2_kernels()) {
    const I8Cost simd = precision_cost(avx2, false);
    EXPECT_EQ(simd.score_nmse, twin.score_nmse);
    EXPECT_EQ(simd.output_nmse, twin.output_nmse);
  }
  const I8Cost wrong = precision_cost(nullptr, true);
  std::printf("with a table off by one code: score NMSE %.3g, output NMSE %.3g\n", wrong.score_nmse,
              wrong.output_nmse);
  EXPECT_GT(wrong.score_nmse, 100 * kScoreNmseBound);
  EXPECT_GT(wrong.output_nmse, 100 * kOutputNmseBound);
}

}  // namespace
}  // namespace polarquant
