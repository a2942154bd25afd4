// Key centering (KvCacheOptions::center_keys): exact for softmax attention, smaller codec error.
#include <gtest/gtest.h>
#include <polarquant/attention.h>
#include <polarquant/kv_cache.h>

#include <cmath>
#include <string>

#include "attention/kernels.h"
#include "cache_test_util.h"
#include "eval/distortion.h"

namespace polarquant {
namespace {

using CacheRun = testing::PromptRun;

// Keys with a large common offset (as real keys have), appended as a prompt then 3 decode tokens.
CacheRun run(const std::string& codec, bool center, bool fused, const char* value_codec = nullptr) {
  const int dim = 64;
  KvCacheOptions o;
  o.n_layers = 1;
  o.n_kv_heads = 2;
  o.head_dim = dim;
  o.key_codec = codec;
  o.value_codec = value_codec ? value_codec : codec;
  o.page_tokens = 32;
  o.center_keys = center;
  const size_t row = 2 * static_cast<size_t>(dim);
  auto data = testing::token_data(203, 2, dim, 5);
  for (size_t i = 0; i < data.k.size(); ++i) data.k[i] += 3.0f * std::cos(0.3f * (i % row));
  return testing::prompt_then_decode(o, data, 200, fused);
}

// ||a - b|| / ||b||.
double rel_error(const std::vector<float>& a, const std::vector<float>& b) {
  return std::sqrt(polarquant::nmse(b.data(), a.data(), b.size()));
}

TEST(CacheCenterKeys, ExactForFullPrecisionAndReadGivesTheOriginalKeys) {
  const CacheRun plain = run("f32", false, true), centered = run("f32", true, true);
  EXPECT_LT(rel_error(centered.out, plain.out), 1e-5);
  EXPECT_LT(rel_error(centered.k, plain.k), 1e-6);
  EXPECT_EQ(centered.v, plain.v);
  EXPECT_EQ(centered.bytes, plain.bytes + 2 * 64 * sizeof(float));  // the stored mean
}

TEST(CacheCenterKeys, FusedOnCenteredCodesEqualsTheDecodedReference) {
  // The fused kernel scores centered keys; the reference path attends over read(), which adds the
  // mean back: the two differ by a per-query constant in the scores only.
  for (const char* codec : {"paper", "polar37", "q4_0"}) {
    const CacheRun fused = run(codec, true, true), reference = run(codec, true, false);
    // The AVX2 set scores paper keys from int8 tables (docs/BENCHMARKS.md 2.5.4): their rounding
    // (~1% of the scores' spread; 0.4-0.7% here) is far above float rounding.
    const bool int8_scores = std::string(codec) == "paper" && best_kernels().name == "avx2";
    EXPECT_LT(rel_error(fused.out, reference.out), int8_scores ? 2e-2 : 2e-4) << codec;
  }
}

TEST(CacheCenterKeys, ReducesTheAttentionErrorOfALossyCodec) {
  const CacheRun exact = run("f32", false, true);
  for (const char* codec : {"paper", "q4_0"}) {
    // Values in full precision: the attention error is then the keys' alone.
    const double plain = rel_error(run(codec, false, true, "f32").out, exact.out);
    const double centered = rel_error(run(codec, true, true, "f32").out, exact.out);
    // The offset here is 3x the spread: the polar codec (error ~ norm) gains most, q4_0 (a scale
    // per 32 values) less.
    EXPECT_LT(centered, (std::string(codec) == "paper" ? 0.7 : 0.85) * plain)
        << codec << ": " << centered << " vs " << plain;
  }
}

}  // namespace
}  // namespace polarquant
