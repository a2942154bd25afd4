// Evaluation on the tiny real model: perplexity/KL bookkeeping (a codec identical to the baseline
// has KL 0 and full top-1 agreement; a lossy one has KL > 0), quantiles, and the
// needle-in-a-haystack prompt construction and grid.
#include "eval/niah.h"
#include "eval/perplexity.h"
#include "model/generation.h"
#include "model/llama_model.h"
#include "model/tokenizer.h"
#include "model_test_util.h"

#include <polarquant/error.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

namespace polarquant::eval {
namespace {

using Tiny = polarquant::testing::TinyModel;
using polarquant::testing::load_stories260k;

const char* kStory =
    "Once upon a time, there was a little dog named Max. Max liked to run in the park with his "
    "friend, a "
    "girl named Sue. One day, Sue found a red ball under a big tree. She threw the ball and Max "
    "ran fast to "
    "get it. They played all day until the sun went down. Then they went home, ate dinner and went "
    "to bed. "
    "The next day, Max and Sue went to the park again. They saw a bird in the tree and a cat on "
    "the grass.";

// The NIAH tests' haystack: the story four times.
std::vector<int> story_haystack(const model::Tokenizer& tokenizer) {
  std::string text;
  for (int i = 0; i < 4; ++i) text += kStory;
  return tokenizer.encode(text, false, false);
}

TEST(ModelEval, QuantileInterpolates) {
  EXPECT_DOUBLE_EQ(quantile({3.0, 1.0, 2.0}, 0.5), 2.0);
  EXPECT_DOUBLE_EQ(quantile({0.0, 10.0}, 0.99), 9.9);
  EXPECT_DOUBLE_EQ(quantile({5.0}, 0.99), 5.0);
  EXPECT_DOUBLE_EQ(quantile({}, 0.5), 0.0);
}

TEST(ModelEval, PerplexityKlIsZeroForTheBaselineAndPositiveForALossyCodec) {
  const Tiny t = load_stories260k();
  if (!t.model) GTEST_SKIP() << "../shared/models absent";
  const std::vector<int> tokens = t.tokenizer->encode(kStory, true, false);
  ASSERT_GE(tokens.size(), 64u);
  PerplexityConfig cfg;
  cfg.ctx = 32;
  cfg.max_chunks = 2;
  cfg.codecs = {{"f16", "f16"}, {"f32", "f32"}, {"bf16", "bf16"}};
  size_t last_done = 0, last_total = 0;
  cfg.progress = [&](size_t done, size_t total) {
    EXPECT_GE(done, last_done);
    last_done = done;
    last_total = total;
  };
  const PerplexityReport r = evaluate_perplexity(*t.model, tokens, cfg);
  EXPECT_EQ(r.chunks, 2u);
  EXPECT_EQ(r.scored_tokens, 2u * (32 - 1 - 16));
  EXPECT_EQ(last_done, last_total);
  // A small story model on a simple story: perplexity well below the vocabulary size.
  EXPECT_GT(r.baseline.ppl, 1.0);
  EXPECT_LT(r.baseline.ppl, 50.0);
  const CodecQuality& same = r.codecs[0];
  EXPECT_DOUBLE_EQ(same.ppl, r.baseline.ppl);
  EXPECT_EQ(same.kld_mean, 0.0);
  EXPECT_EQ(same.top1_agreement, 1.0);
  const CodecQuality& exact = r.codecs[1];  // fp32 vs fp16 cache: tiny but real differences
  EXPECT_LT(exact.kld_mean, 1e-5);
  EXPECT_NEAR(exact.ppl, r.baseline.ppl, 1e-2 * r.baseline.ppl);
  const CodecQuality& lossy = r.codecs[2];  // bf16 has 8 mantissa bits vs fp16's 11
  EXPECT_GT(lossy.kld_mean, exact.kld_mean);
  EXPECT_GE(lossy.kld_p99, lossy.kld_mean * 0.5);
  EXPECT_GT(lossy.kv_bytes, 0u);
  EXPECT_GT(lossy.kv_fp16_bytes, 0u);
  cfg.ctx = 4096;  // beyond the model's context of 512
  EXPECT_THROW(evaluate_perplexity(*t.model, tokens, cfg), Error);
  cfg.ctx = 256;  // longer than the text
  EXPECT_THROW(evaluate_perplexity(*t.model, tokens, cfg), Error);
}

TEST(ModelEval, NiahPromptHasTheNeedleAtItsDepth) {
  const Tiny t = load_stories260k();
  if (!t.model) GTEST_SKIP() << "../shared/models absent";
  const std::vector<int> haystack = story_haystack(*t.tokenizer);
  NiahConfig cfg;
  cfg.needle = "The secret word is apple.";
  const std::vector<int> needle = t.tokenizer->encode(" " + cfg.needle + " ", false, false);
  for (double depth : {0.0, 0.5, 1.0}) {
    const std::vector<int> p = build_niah_prompt(*t.tokenizer, haystack, cfg, 200, depth);
    EXPECT_EQ(p.size(), 200u - cfg.max_new_tokens);
    const auto it = std::search(p.begin(), p.end(), needle.begin(), needle.end());
    ASSERT_NE(it, p.end()) << depth;
    const double at = static_cast<double>(it - p.begin()) / static_cast<double>(p.size());
    EXPECT_NEAR(at, depth * 0.75, 0.2)
        << depth;  // the question and answer prefix follow the haystack
  }
  EXPECT_THROW(build_niah_prompt(*t.tokenizer, haystack, cfg, 100000, 0.5), Error);
  EXPECT_THROW(build_niah_prompt(*t.tokenizer, haystack, cfg, 200, 1.5), Error);
}

TEST(ModelEval, NiahGridCoversEveryCell) {
  const Tiny t = load_stories260k();
  if (!t.model) GTEST_SKIP() << "../shared/models absent";
  const std::vector<int> haystack = story_haystack(*t.tokenizer);
  NiahConfig cfg;
  cfg.contexts = {96, 160};
  cfg.depths = {0.0, 1.0};
  cfg.codecs = {{"f32", "f32"}, {"f16", "f16"}};
  cfg.needle = "Max has a blue hat.";
  cfg.question = "What does Max have?";
  cfg.answer_prefix = "Max has a";
  cfg.answer = "hat";
  const NiahReport r = run_niah(*t.model, *t.tokenizer, haystack, cfg);
  ASSERT_EQ(r.cells.size(), 8u);
  ASSERT_EQ(r.recall.size(), 2u);
  double recalled = 0;
  for (const auto& c : r.cells) {
    EXPECT_EQ(c.recalled, c.output.find("hat") != std::string::npos);
    if (c.codec.key_codec == "f32") recalled += c.recalled;
  }
  EXPECT_DOUBLE_EQ(r.recall[0], recalled / 4.0);
  ASSERT_EQ(r.mean_margin.size(), 2u);
  double margin = 0;
  for (const auto& c : r.cells) {
    EXPECT_TRUE(std::isfinite(c.margin)) << c.output;
    if (c.codec.key_codec == "f32") margin += c.margin;
  }
  EXPECT_NEAR(r.mean_margin[0], margin / 4.0, 1e-12);
}

TEST(ModelEval, AnswerMarginFollowsTheAnswerUntilGreedyLeavesIt) {
  // Vocabulary of 4; the answer is tokens 2, 1, 3.
  const std::vector<int> answer = {2, 1, 3};
  const std::vector<float> logits = {0, 1, 5,   2,   // chose 2 (answer): margin 5 - 2 = 3
                                     0, 4, 3.5, 1,   // chose 1 (answer): 4 - 3.5 = 0.5
                                     6, 0, 0,   2};  // chose 0, answer 3: 2 - 6 = -4
  EXPECT_DOUBLE_EQ(answer_margin(answer, {2, 1, 0}, logits, 4), -4.0);
  EXPECT_DOUBLE_EQ(answer_margin(answer, {2, 1, 3}, logits, 4), -4.0);  // 3 "chosen" at -4
  EXPECT_DOUBLE_EQ(answer_margin(answer, {2, 1}, {logits.begin(), logits.begin() + 8}, 4), 0.5);
  EXPECT_DOUBLE_EQ(answer_margin(answer, {3}, {logits.begin(), logits.begin() + 4}, 4), 3.0);
  EXPECT_DOUBLE_EQ(answer_margin({2}, {2, 1, 0}, logits, 4), 3.0);  // past the answer: ignored
  EXPECT_THROW(answer_margin({}, {2}, {logits.begin(), logits.begin() + 4}, 4), Error);
  EXPECT_THROW(answer_margin(answer, {2, 1}, logits, 4), Error);  // 12 logits for 2 tokens
  EXPECT_THROW(answer_margin({7}, {2}, {logits.begin(), logits.begin() + 4}, 4), Error);
}

}  // namespace
}  // namespace polarquant::eval
