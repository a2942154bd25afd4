// Every compiled SIMD kernel set against the scalar set, kernel by kernel, on shapes chosen to hit
// the tails (dimensions and token counts around multiples of 16, head groups around the SIMD
// passes of 4 and 8) and on every code width and radius precision of the PolarQuant pages.
//
// Tolerance: the sets differ only in summation order, fused multiply-adds and the exp polynomial
// (relative error < 2e-7), so results agree to a few float ulps of the sum of absolute terms:
// |simd - scalar| <= 1e-5 * (1 + sum |terms|).
#include <gtest/gtest.h>
#include <polarquant/half.h>
#include <polarquant/polar_codec.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "attention/kernels.h"
#include "cache/page_format.h"
#include "cache_test_util.h"

namespace polarquant {
namespace {

using testing::gaussian;

std::vector<const KernelSet*> simd_sets() {
  auto sets = available_kernels();
  sets.erase(sets.begin());  // scalar
  return sets;
}

TEST(AttentionKernels, SimdSetsAreCompiledWhereTheCpuHasThem) {
  // Not a tautology on this project's machines (AVX-512 with VBMI, hence AVX2): the tests below
  // would otherwise pass vacuously. On other CPUs this reports which sets ran.
  std::vector<std::string> want{"scalar"};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) want.push_back("avx2");
  if (__builtin_cpu_supports("avx512vbmi")) want.push_back("avx512");
  std::vector<std::string> got;
  for (const KernelSet* k : available_kernels()) got.push_back(k->name);
  EXPECT_EQ(got, want);
  if (std::getenv("POLARQUANT_CPU") == nullptr) {
    EXPECT_EQ(best_kernels().name, want.back());
  }
  for (const KernelSet* k : available_kernels()) std::printf("kernel set: %s\n", k->name.c_str());
}

TEST(AttentionKernels, KernelSetsAreFoundByName) {
  for (const KernelSet* k : available_kernels()) EXPECT_EQ(kernels_named(k->name), k);
  EXPECT_EQ(kernels_named("sse9"), nullptr);
  // POLARQUANT_CPU values: unset or empty -> the fastest; a runnable name -> that set; anything
  // else -> the fastest (and a line on stderr).
  const KernelSet* fastest = available_kernels().back();
  EXPECT_EQ(&kernels_for(nullptr), fastest);
  EXPECT_EQ(&kernels_for(""), fastest);
  EXPECT_EQ(&kernels_for("scalar"), &scalar_kernels());
  EXPECT_EQ(&kernels_for("sse9"), fastest);
  if (avx2_kernels() != nullptr) {
    EXPECT_EQ(&kernels_for("avx2"), avx2_kernels());
  }
}

TEST(AttentionKernels, RowKernelsMatchScalar) {
  const KernelSet& ref = scalar_kernels();
  for (const KernelSet* k : simd_sets()) {
    for (int dim : {1, 3, 15, 16, 17, 64, 130}) {
      for (int g : {1, 3, 4, 5, 9}) {
        for (size_t n : {1u, 3u, 4u, 5u, 17u, 33u}) {
          SCOPED_TRACE(k->name + " dim " + std::to_string(dim) + " g " + std::to_string(g) + " n " +
                       std::to_string(n));
          const size_t stride = dim + 3;
          const auto q = gaussian(g * dim, 1);
          const auto rows = gaussian(n * stride, 2);
          std::vector<uint16_t> halves(rows.size());
          for (size_t i = 0; i < rows.size(); ++i) halves[i] = float_to_half(rows[i]);
          std::vector<float> a(g * 40, 0.0f), b(g * 40, 0.0f);
          for (int half = 0; half < 2; ++half) {
            if (half) {
              ref.score_f16(q.data(), g, dim, halves.data(), stride, n, a.data(), 40);
              k->score_f16(q.data(), g, dim, halves.data(), stride, n, b.data(), 40);
            } else {
              ref.score_f32(q.data(), g, dim, rows.data(), stride, n, a.data(), 40);
              k->score_f32(q.data(), g, dim, rows.data(), stride, n, b.data(), 40);
            }
            for (size_t i = 0; i < a.size(); ++i) {
              EXPECT_NEAR(a[i], b[i], 1e-5 * (1 + 4 * dim)) << "score " << i;
            }
            const auto p = gaussian(g * 40, 3);
            std::vector<float> acc_a(g * dim, 0.5f), acc_b(g * dim, 0.5f);
            if (half) {
              ref.value_f16(p.data(), 40, g, dim, halves.data(), stride, n, acc_a.data());
              k->value_f16(p.data(), 40, g, dim, halves.data(), stride, n, acc_b.data());
            } else {
              ref.value_f32(p.data(), 40, g, dim, rows.data(), stride, n, acc_a.data());
              k->value_f32(p.data(), 40, g, dim, rows.data(), stride, n, acc_b.data());
            }
            for (size_t i = 0; i < acc_a.size(); ++i) {
              EXPECT_NEAR(acc_a[i], acc_b[i], 1e-5 * (1 + 10 * n)) << "acc " << i;
            }
          }
        }
      }
    }
  }
}

TEST(AttentionKernels, SoftmaxMatchesScalar) {
  for (const KernelSet* k : simd_sets()) {
    for (size_t n : {1u, 15u, 16u, 17u, 100u}) {
      for (float m0 : {-INFINITY, 0.0f, 50.0f}) {
        auto s = gaussian(n, n, 30.0f);
        auto t = s;
        float ma = m0, mb = m0, la = 2.0f, lb = 2.0f;
        const float alpha_a = scalar_kernels().softmax(s.data(), n, &ma, &la);
        const float alpha_b = k->softmax(t.data(), n, &mb, &lb);
        EXPECT_EQ(ma, mb);
        EXPECT_NEAR(alpha_a, alpha_b, 1e-6f * alpha_a + 1e-30f);
        EXPECT_NEAR(la, lb, 1e-6f * la);
        for (size_t i = 0; i < n; ++i) EXPECT_NEAR(s[i], t[i], 1e-6f * s[i] + 1e-38f);
      }
    }
  }
}

// One PolarQuant page of `tokens` slots holding random vectors, for a given allocation.
struct PolarPage {
  std::unique_ptr<PolarCodec> codec;
  std::unique_ptr<PolarPageFormat> format;
  std::vector<uint8_t> bytes;
};

PolarPage make_page(int dim, std::vector<int> bits, RadiusPrecision radius, int page_tokens,
                    size_t filled) {
  PolarPage p;
  PolarConfig config;
  config.dim = dim;
  config.levels = static_cast<int>(bits.size());
  config.bits = bits;
  config.radius = radius;
  config.rotation = RotationKind::kHadamard;
  p.codec = std::make_unique<PolarCodec>(config);
  p.format = std::make_unique<PolarPageFormat>(*p.codec, page_tokens);
  p.bytes.assign(p.format->head_bytes(), 0);
  const auto x = gaussian(filled * dim, 7);
  p.format->store(x.data(), filled, 1, p.bytes.data(), p.format->head_bytes(), 0);
  return p;
}

TEST(AttentionKernels, PolarKernelsMatchScalarForEveryCodeWidth) {
  struct Config {
    int dim;
    std::vector<int> bits;
    RadiusPrecision radius;
  };
  const std::vector<Config> configs = {
      {128, {4, 2, 2, 2}, RadiusPrecision::kFp16},  // paper
      {64, {4, 2, 2, 2}, RadiusPrecision::kBf16},   // paper widths, other radii
      {128, {4, 2, 2, 2}, RadiusPrecision::kFp32},
      {64, {1, 3}, RadiusPrecision::kBf16},                     // 1- and 3-bit codes
      {128, {5, 4, 8}, RadiusPrecision::kFp32},                 // permutex2var and 8-bit gathers
      {128, {6, 7, 2, 1, 3}, RadiusPrecision::kFp16},           // gathers, packed widths
      {256, {4, 3, 3, 3, 3, 3, 3, 3}, RadiusPrecision::kFp16},  // L = 8: the deepest SIMD tree
      {64, {5, 4, 4, 4, 4, 4}, RadiusPrecision::kFp16},   // polar4kv's keys (compile-time widths)
      {128, {4, 2, 2, 2, 2, 2}, RadiusPrecision::kFp16},  // polar4kv's values
      {128, {4, 3, 3, 3, 3, 3}, RadiusPrecision::kBf16},  // polar37
      {512, {4, 2, 2, 2, 2, 2, 2, 2, 2}, RadiusPrecision::kFp16},  // L = 9: scalar fallback
  };
  for (const KernelSet* k : simd_sets()) {
    for (const Config& c : configs) {
      // The paper widths have their own kernels (one per head count up to 8): every g, and the
      // cache's default page of 32 slots as well as 64.
      const bool paper = c.bits == std::vector<int>{4, 2, 2, 2};
      for (auto [page_tokens, filled] : {std::pair<int, size_t>{64, 1},
                                         {64, 16},
                                         {64, 12},
                                         {64, 17},
                                         {64, 64},
                                         {32, 17},
                                         {32, 29},
                                         {32, 32}}) {
        // The cache's 32-token pages for the widths the model commands use by default.
        const bool default_pair = c.bits.size() == 6 && (c.bits[1] == 4 || c.bits[1] == 2);
        if (page_tokens == 32 && !paper && !default_pair) continue;
        SCOPED_TRACE(k->name + " dim " + std::to_string(c.dim) + " L " +
                     std::to_string(c.bits.size()) + " page " + std::to_string(page_tokens) +
                     " filled " + std::to_string(filled));
        const PolarPage page = make_page(c.dim, c.bits, c.radius, page_tokens, filled);
        for (int g :
             paper ? std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8, 9, 17} : std::vector<int>{1, 4, 9}) {
          const auto q = gaussian(g * c.dim, 8);
          PolarTables tables;
          build_polar_tables(*page.format, q.data(), g, tables, k->int8_score_tables);
          // The analytic level-1 codebook is a half-turn one at 4 and 5 bits; such pages are also
          // read with the flag off, as a codebook without that symmetry would be.
          EXPECT_EQ(tables.level1_half_turn, c.bits[0] == 4 || c.bits[0] == 5);
          const bool built = tables.level1_half_turn;
          for (bool turn : built ? std::vector<bool>{true, false} : std::vector<bool>{false}) {
            SCOPED_TRACE(turn ? "level-1 half turn" : "level-1 any codebook");
            tables.level1_half_turn = turn;
            for (size_t slot : {0u, 16u}) {
              if (slot >= filled) continue;
              const size_t n = filled - slot;
              std::vector<float> a(g * 64, 0.0f), b(g * 64, 0.0f);
              // The AVX2 set scores paper pages with the half turn from int8 tables: its twin
              // is scalar_score_paper_i8, bit for bit (attention_avx2_i8_test.cpp bounds the
              // precision against the float kernel); likewise the allocations of
              // polar_i8_scores_apply, twin scalar_score_polar_i8 (attention_avx2_i8_polar_test).
              const bool i8_paper = k->name == "avx2" && paper && turn;
              const bool i8_pair = k->name == "avx2" && polar_i8_scores_apply(tables, g);
              const bool i8 = i8_paper || i8_pair;
              if (i8_paper) {
                scalar_score_paper_i8(tables, page.bytes.data(), slot, n, g, a.data(), 64);
              } else if (i8_pair) {
                scalar_score_polar_i8(tables, page.bytes.data(), slot, n, g, a.data(), 64);
              } else {
                scalar_kernels().score_polar(tables, page.bytes.data(), slot, n, g, a.data(), 64);
              }
              k->score_polar(tables, page.bytes.data(), slot, n, g, b.data(), 64);
              for (size_t i = 0; i < a.size(); ++i) {
                EXPECT_NEAR(a[i], b[i], i8 ? 0.0 : 1e-5 * (1 + 4 * c.dim)) << "score " << i;
              }
              const auto p = gaussian(g * 64, 9);
              // Lane accumulators of each set's width, both starting from 4 per coordinate: the
              // sums over lanes must agree, and each lane must hold its slots (the scalar kernel
              // over the SIMD set's lane count is the twin lane by lane).
              const int lanes = k->value_lanes;
              std::vector<float> la(g * c.dim * 16, 0.25f), lb(g * c.dim * lanes, 4.0f / lanes);
              std::vector<float> lc(lb);
              scalar_kernels().value_polar(tables, page.bytes.data(), slot, n, g, p.data(), 64,
                                           la.data());
              k->value_polar(tables, page.bytes.data(), slot, n, g, p.data(), 64, lb.data());
              scalar_value_polar(tables, page.bytes.data(), slot, n, g, p.data(), 64, lc.data(),
                                 lanes);
              const double tol = 1e-5 * (1 + 4 * std::sqrt(c.dim));
              for (size_t i = 0; i < lb.size(); ++i) EXPECT_NEAR(lc[i], lb[i], tol) << "lane " << i;
              for (size_t j = 0; j < static_cast<size_t>(g * c.dim); ++j) {
                double sa = 0.0, sb = 0.0;
                for (int l = 0; l < 16; ++l) sa += la[j * 16 + l];
                for (int l = 0; l < lanes; ++l) sb += lb[j * lanes + l];
                EXPECT_NEAR(sa, sb, tol * 4) << "coordinate " << j;
              }
            }
          }
        }
      }
    }
  }
}

// The page layout round-trips every code width and radius precision exactly: unpack returns the
// codes and radii quantize_rotated produced.
TEST(AttentionKernels, PolarPageStoresExactlyWhatTheCodecQuantized) {
  for (auto bits :
       std::vector<std::vector<int>>{{4, 2, 2, 2}, {1, 3}, {5, 4, 8}, {6, 7, 2, 1, 3}}) {
    for (auto radius : {RadiusPrecision::kFp16, RadiusPrecision::kBf16, RadiusPrecision::kFp32}) {
      const int dim = 128 / (bits.size() == 2 ? 2 : 1);
      const size_t n = 48;
      PolarPage page = make_page(dim, bits, radius, 64, n);
      const PolarCodec& codec = *page.codec;
      const auto x = gaussian(n * dim, 7);
      std::vector<float> y(x.size());
      codec.rotation().forward(x.data(), y.data(), n);
      const auto& shape = codec.shape();
      std::vector<uint8_t> want_codes(n * shape.num_angles()), got_codes(want_codes.size());
      std::vector<float> want_radii(n * shape.num_radii()), got_radii(want_radii.size());
      codec.quantize_rotated(y.data(), n, want_codes.data(), want_radii.data());
      page.format->unpack(page.bytes.data(), 0, n, got_codes.data(), got_radii.data());
      EXPECT_EQ(got_codes, want_codes);
      EXPECT_EQ(got_radii, want_radii);
    }
  }
}

}  // namespace
}  // namespace polarquant
