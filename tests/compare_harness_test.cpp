// The comparison harness: data preparation, bit accounting with fp16 tails and windows, error
// ordering, dumps, and the CLI's JSON.
#include <gtest/gtest.h>

#include <polarquant/error.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <string>

#include "core/random.h"
#include "eval/compare.h"

namespace polarquant {
namespace {

CompareOptions fast(std::vector<std::string> codecs) {
  CompareOptions o;
  o.codecs = std::move(codecs);
  o.min_seconds = 1e-4;
  return o;
}

TEST(CompareHarness, GeneratedQueriesHaveTheDesignedScoreSpread) {
  const auto data = generated_compare_data(GeneratedKind::kKeylike, 64, 300, 5, 9);
  ASSERT_EQ(data.heads.size(), 1u);
  const auto& h = data.heads[0];
  EXPECT_EQ(h.k.size(), 300u * 64);
  EXPECT_EQ(h.v.size(), 300u * 64);
  ASSERT_EQ(h.query_keys.size(), 5u);
  for (size_t a = 0; a < 5; ++a) {
    EXPECT_EQ(h.query_keys[a], 300u);
    double sum = 0, sum_sq = 0;
    for (size_t i = 0; i < 300; ++i) {
      double s = 0;
      for (size_t j = 0; j < 64; ++j) s += double(h.q[a * 64 + j]) * h.k[i * 64 + j];
      s /= 8.0;
      sum += s, sum_sq += s * s;
    }
    const double mean = sum / 300;
    EXPECT_NEAR(std::sqrt(sum_sq / 300 - mean * mean), 2.5, 1e-3);
  }
}

TEST(CompareHarness, BitsCountTailsAndRecentWindowsInFp16) {
  // 250 tokens: KIVI keys code 7 groups of 32 (224 tokens) and keep 26 in fp16.
  const auto data = generated_compare_data(GeneratedKind::kGaussian, 64, 250, 4, 1);
  auto rows = run_compare(data, fast({"kivi2", "q4_0"}));
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].key_codec, "kivi2k");
  EXPECT_EQ(rows[0].value_codec, "kivi2v");
  EXPECT_DOUBLE_EQ(rows[0].key_bits, (224 * 3.0 + 26 * 16.0) / 250);
  EXPECT_DOUBLE_EQ(rows[0].value_bits, 3.0);
  EXPECT_DOUBLE_EQ(rows[0].bits_per_coordinate, 0.5 * (rows[0].key_bits + 3.0));
  EXPECT_DOUBLE_EQ(rows[1].bits_per_coordinate, 4.5);
  EXPECT_DOUBLE_EQ(rows[1].compression_vs_fp16, 16.0 / 4.5);

  CompareOptions window = fast({"q4_0"});
  window.recent_tokens = 50;
  rows = run_compare(data, window);
  EXPECT_DOUBLE_EQ(rows[0].bits_per_coordinate, (200 * 4.5 + 50 * 16.0) / 250);
}

TEST(CompareHarness, ErrorsOrderWithBits) {
  const auto data = generated_compare_data(GeneratedKind::kKeylike, 64, 256, 8, 2);
  const auto rows = run_compare(data, fast({"f16", "q8_0", "q4_0", "kivi4", "kivi2"}));
  for (const auto& r : rows) {
    EXPECT_GT(r.encode_vectors_per_s, 0) << r.codec;
    EXPECT_GT(r.attention_tokens_per_s, 0) << r.codec;
    EXPECT_GE(r.softmax_kl, 0) << r.codec;
  }
  EXPECT_LT(rows[0].nmse, 1e-6);
  EXPECT_LT(rows[0].softmax_kl, 1e-6);
  for (auto metric : {&CompareRow::nmse, &CompareRow::inner_product_error,
                      &CompareRow::attention_error, &CompareRow::softmax_kl}) {
    EXPECT_LT(rows[0].*metric, rows[1].*metric);
    EXPECT_LT(rows[1].*metric, rows[2].*metric);
    EXPECT_LT(rows[3].*metric, rows[4].*metric);
  }
}

KvDump small_dump() {
  KvDump d;
  d.n_tokens = 40;
  d.n_kv_heads = 2;
  d.n_q_heads = 4;
  d.head_dim = 32;
  d.description = "designed";
  Rng rng(6);
  for (int id : {1, 5}) {
    KvDumpLayer layer;
    layer.layer_id = id;
    for (size_t i = 0; i < 40 * d.kv_row(); ++i) layer.k.push_back(float(rng.gaussian()));
    for (size_t i = 0; i < 40 * d.kv_row(); ++i) layer.v.push_back(float(rng.gaussian()));
    for (size_t i = 0; i < 40 * d.q_row(); ++i) layer.q.push_back(float(rng.gaussian()));
    d.layers.push_back(std::move(layer));
  }
  return d;
}

TEST(CompareHarness, DumpHeadsAreCausalAndGrouped) {
  const KvDump dump = small_dump();
  const auto data = dump_compare_data(dump, 3);
  ASSERT_EQ(data.heads.size(), 4u);  // 2 layers x 2 KV heads
  const auto& h = data.heads[3];     // layer 5, KV head 1
  EXPECT_EQ(h.query_keys, (std::vector<size_t>{38, 38, 39, 39, 40, 40}));
  // Key 7 of KV head 1 and the query of token 38, query head 3 (the second of KV head 1's group).
  EXPECT_EQ(h.k[7 * 32 + 4], dump.layers[1].k[7 * 64 + 32 + 4]);
  EXPECT_EQ(h.q[3 * 32 + 5], dump.layers[1].q[38 * 128 + 3 * 32 + 5]);
  const auto rows = run_compare(data, fast({"f16", "q4_0"}));
  EXPECT_LT(rows[0].attention_error, rows[1].attention_error);
  EXPECT_DOUBLE_EQ(rows[1].bits_per_coordinate, 4.5);
}

TEST(CompareHarness, CenteredKeysHaveZeroMeanOverTheirFirstTokensAndKeepTheSoftmax) {
  const auto raw = generated_compare_data(GeneratedKind::kKeylike, 32, 100, 4, 3);
  auto data = raw;
  center_compare_keys(data, 10);
  const auto& h = data.heads[0];
  for (int c = 0; c < 32; ++c) {
    double sum = 0;
    for (int t = 0; t < 10; ++t) sum += h.k[t * 32 + c];
    EXPECT_NEAR(sum / 10, 0.0, 1e-5) << "channel " << c;
    // Every later key moved by the same per-channel mean.
    const float shift = raw.heads[0].k[c] - h.k[c];
    EXPECT_NEAR(raw.heads[0].k[77 * 32 + c] - h.k[77 * 32 + c], shift, 1e-4f);
    EXPECT_GT(std::abs(shift), 0.0f);  // key-like data has a per-channel mean
  }
  // Softmax attention is shift-invariant per query: f32 still matches it exactly, and the
  // centered key-like keys are cheaper for a codec.
  const auto centered = run_compare(data, fast({"f32", "paper"}));
  const auto plain = run_compare(raw, fast({"f32", "paper"}));
  EXPECT_LT(centered[0].softmax_kl, 1e-9);
  EXPECT_LT(centered[0].attention_error, 1e-5);
  EXPECT_NE(centered[1].nmse_k, plain[1].nmse_k);
  EXPECT_THROW(center_compare_keys(data, 0), Error);
}

TEST(CompareHarness, UnknownCodecIsRefused) {
  const auto data = generated_compare_data(GeneratedKind::kGaussian, 64, 64, 2, 1);
  EXPECT_THROW(run_compare(data, fast({"q3_7"})), Error);
  EXPECT_THROW(generated_compare_data(GeneratedKind::kGaussian, 1, 64, 2, 1), Error);
}

TEST(CompareHarness, CliJsonRows) {
  const std::string cmd = std::string(POLARQUANT_CLI_PATH) +
                          " compare --data gaussian --dim 64 --count 96 --queries 4 "
                          "--codecs f16,q4_0h,kivi4,turbo3 --min-time 0.001 --json";
  FILE* pipe = popen(cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, pipe)) > 0;) out.append(buf, n);
  ASSERT_EQ(pclose(pipe), 0) << out;
  const auto json = nlohmann::json::parse(out);
  ASSERT_EQ(json["rows"].size(), 4u);
  EXPECT_EQ(json["rows"][1]["codec"], "q4_0h");
  EXPECT_DOUBLE_EQ(json["rows"][1]["bits_per_coordinate"].get<double>(), 4.5);
  EXPECT_LT(json["rows"][0]["nmse"].get<double>(), json["rows"][3]["nmse"].get<double>());
}

}  // namespace
}  // namespace polarquant
