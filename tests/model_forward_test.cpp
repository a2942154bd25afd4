// The forward pass end to end: the tiny llama2.c model's greedy output equals its published oracle
// text, building blocks (RMSNorm, RoPE) against their definitions, GQA head mapping, chunked
// prefill equal to token-by-token decoding, and SmolLM2 (when fetched) against its own fp16-cache
// run.
#include "model/generation.h"
#include "model/llama_model.h"
#include "model/sampler.h"
#include "model/tokenizer.h"
#include "model/transformer.h"
#include "model_test_util.h"

#include <polarquant/error.h>

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>

namespace polarquant::model {
namespace {

const char* kOracle =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
    "One day, "
    "she saw a big, red ball. She wanted to play with it, but it was too high.";

using Tiny = polarquant::testing::TinyModel;
using polarquant::testing::load_stories260k;

std::string greedy_text(const LlamaModel& m, const Tokenizer& tok, const RuntimeOptions& rt,
                        int n) {
  Transformer tf(m, rt);
  GenerationOptions gen;
  gen.max_new_tokens = n;
  std::string text;
  generate(tf, tf.add_sequence(), tok, {tok.bos()}, gen,
           [&](int, const std::string& s) { text += s; });
  return text;
}

TEST(ModelForward, Stories260KGreedyMatchesOracle) {
  const Tiny t = load_stories260k();
  if (!t.model) GTEST_SKIP() << "../shared/models absent";
  const LlamaConfig& c = t.model->config();
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_TRUE(t.model->tied_output());
  for (const char* codec : {"f32", "f16"}) {
    RuntimeOptions rt;
    rt.key_codec = rt.value_codec = codec;
    const std::string text = greedy_text(*t.model, *t.tokenizer, rt, 80);
    EXPECT_EQ(text.substr(0, std::string(kOracle).size()), kOracle) << codec << ": " << text;
  }
}

TEST(ModelForward, ChunkedPrefillEqualsTokenByToken) {
  const Tiny t = load_stories260k();
  if (!t.model) GTEST_SKIP() << "../shared/models absent";
  const std::vector<int> tokens =
      t.tokenizer->encode("One day, a cat and a dog went to the big park to play.", true, false);
  const size_t vocab = static_cast<size_t>(t.model->config().vocab_size);
  RuntimeOptions rt;
  rt.key_codec = rt.value_codec = "f32";
  rt.prefill_chunk = 5;  // several chunks, the last one partial
  Transformer batched(*t.model, rt);
  std::vector<float> all;
  batched.forward(batched.add_sequence(), tokens.data(), tokens.size(), all, true);
  Transformer single(*t.model, rt);
  const SequenceId seq = single.add_sequence();
  std::vector<float> one;
  for (size_t i = 0; i < tokens.size(); ++i) {
    single.forward(seq, &tokens[i], 1, one, false);
    for (size_t j = 0; j < vocab; ++j)
      ASSERT_NEAR(one[j], all[i * vocab + j], 2e-4f) << "token " << i;
  }
  EXPECT_EQ(single.position(seq), tokens.size());
  EXPECT_THROW(single.forward(seq, std::vector<int>{512}.data(), 1, one, false), Error);
}

// RoPE-aware key centering through the runtime (the model's frequencies reach the cache): with a
// lossless cache the logits equal those without it, with 4 sink tokens and pages of 32 filling.
TEST(ModelForward, RopeCenteredKeysLeaveLogitsExact) {
  const Tiny t = load_stories260k();
  if (!t.model) GTEST_SKIP() << "../shared/models absent";
  std::vector<int> tokens;
  for (int i = 0; tokens.size() < 150; ++i) {
    const auto more = t.tokenizer->encode(
        "Once upon a time, a little girl named Lily found a shiny red ball in the park.",
        tokens.empty(), false);
    tokens.insert(tokens.end(), more.begin(), more.end());
  }
  const size_t vocab = static_cast<size_t>(t.model->config().vocab_size);
  RuntimeOptions rt;
  rt.key_codec = rt.value_codec = "f32";
  rt.sink_tokens = 4;
  rt.prefill_chunk = 64;
  std::vector<float> plain, rope;
  Transformer a(*t.model, rt);
  a.forward(a.add_sequence(), tokens.data(), tokens.size(), plain, true);
  rt.rope_center_keys = true;
  Transformer b(*t.model, rt);
  b.forward(b.add_sequence(), tokens.data(), tokens.size(), rope, true);
  double worst = 0.0;
  for (size_t i = 0; i < plain.size(); ++i)
    worst = std::max(worst, std::fabs(double{plain[i]} - rope[i]));
  EXPECT_LT(worst, 2e-3) << "over " << tokens.size() << " tokens x " << vocab;
  EXPECT_FALSE(b.cache().options().key_rope_inv_freq.empty());
  rt.center_keys = false;  // --no-center-keys: no centering at all, RoPE-aware or not
  const Transformer c(*t.model, rt);
  EXPECT_TRUE(c.cache().options().key_rope_inv_freq.empty());
  EXPECT_FALSE(c.cache().options().center_keys);
}

TEST(ModelForward, RmsNormAndRopeFollowTheirDefinitions) {
  std::mt19937 rng(5);
  std::normal_distribution<float> g;
  std::vector<float> x(64), w(64), out(64);
  for (int i = 0; i < 64; ++i) {
    x[i] = g(rng);
    w[i] = 1.0f + 0.1f * g(rng);
  }
  rms_norm(x.data(), w.data(), 64, 1e-5f, out.data());
  double ms = 0.0;
  for (float v : x) ms += v * v;
  ms /= 64;
  for (int i = 0; i < 64; ++i) EXPECT_NEAR(out[i], x[i] / std::sqrt(ms + 1e-5) * w[i], 1e-5);
  // RoPE is a rotation per pair: norms of pairs are kept, position 0 is the identity, and the
  // rotation angles add: rotating by p then by q equals rotating by p+q (for a per-pair frequency).
  const int hd = 16, heads = 2;
  std::vector<float> inv(hd / 2);
  for (int i = 0; i < hd / 2; ++i) inv[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / hd));
  std::vector<float> a(x.begin(), x.begin() + hd * heads), b = a, c = a;
  rope_rotate(b.data(), hd, heads, 0, inv.data());
  EXPECT_EQ(a, b);
  rope_rotate(b.data(), hd, heads, 7, inv.data());
  rope_rotate(b.data(), hd, heads, 5, inv.data());
  rope_rotate(c.data(), hd, heads, 12, inv.data());
  for (int i = 0; i < hd * heads; i += 2) {
    EXPECT_NEAR(std::hypot(b[i], b[i + 1]), std::hypot(a[i], a[i + 1]), 1e-5);
    EXPECT_NEAR(b[i], c[i], 1e-5);
    EXPECT_NEAR(b[i + 1], c[i + 1], 1e-5);
  }
}

// Attention scores only depend on relative positions: q at position p+s against k at position s
// has the same dot product for every s.
TEST(ModelForward, RopeScoresDependOnRelativePosition) {
  const int hd = 8;
  std::vector<float> inv(hd / 2);
  for (int i = 0; i < hd / 2; ++i) inv[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / hd));
  const std::vector<float> q0 = {0.3f, -1.2f, 0.5f, 0.9f, -0.4f, 0.1f, 1.5f, -0.7f};
  const std::vector<float> k0 = {1.1f, 0.2f, -0.6f, 0.4f, 0.8f, -1.3f, 0.05f, 0.6f};
  double first = 0.0;
  for (size_t s : {0u, 3u, 50u, 1000u}) {
    auto q = q0, k = k0;
    rope_rotate(q.data(), hd, 1, s + 9, inv.data());
    rope_rotate(k.data(), hd, 1, s, inv.data());
    double dot = 0.0;
    for (int i = 0; i < hd; ++i) dot += q[i] * k[i];
    if (s == 0) first = dot;
    EXPECT_NEAR(dot, first, 1e-4) << s;
  }
}

TEST(ModelForward, SamplerIsSeededAndRespectsTopP) {
  std::vector<float> logits = {2.0f, 1.0f, 0.5f, -1.0f, -3.0f};
  Sampler greedy({0.0f, 1.0f, 1});
  EXPECT_EQ(greedy.sample(logits.data(), logits.size()), 0);
  Sampler a({1.0f, 1.0f, 7}), b({1.0f, 1.0f, 7});
  std::vector<int> counts(5);
  for (int i = 0; i < 4000; ++i) {
    const int x = a.sample(logits.data(), logits.size());
    EXPECT_EQ(x, b.sample(logits.data(), logits.size()));
    ++counts[x];
  }
  // Frequencies follow softmax(logits): p0 = 0.609 (4000 draws: sd ~ 0.008).
  EXPECT_NEAR(counts[0] / 4000.0, 0.609, 0.04);
  // top_p = 0.7 keeps tokens 0 and 1 only (0.609 < 0.7 <= 0.609 + 0.224).
  Sampler nucleus({1.0f, 0.7f, 3});
  for (int i = 0; i < 2000; ++i) EXPECT_LT(nucleus.sample(logits.data(), logits.size()), 2);
  EXPECT_THROW(Sampler({-1.0f, 1.0f, 0}), Error);
  EXPECT_THROW(Sampler({1.0f, 0.0f, 0}), Error);
}

TEST(ModelForward, TruncatedCheckpointsAreFormatErrors) {
  const std::string path = polarquant::testing::shared_dir() + "/models/stories260K.bin";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "../shared/models absent";
  MappedFile f(path);
  for (size_t n : {size_t{0}, size_t{27}, size_t{28}, size_t{1000}, f.size() / 2, f.size() - 1}) {
    try {
      LlamaModel::parse_llama2c(f.data(), n, "cut");
      ADD_FAILURE() << n;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kFormat);
    }
  }
  std::vector<uint8_t> bad(f.data(), f.data() + f.size());
  const int32_t heads = 7;  // 64 is not divisible by 7
  std::memcpy(bad.data() + 12, &heads, 4);
  EXPECT_THROW(LlamaModel::parse_llama2c(bad.data(), bad.size(), "bad"), Error);
}

TEST(ModelForward, SmolLM2WithF16CacheAgreesWithF32Cache) {
  const std::string path = polarquant::testing::smollm2_path();
  if (path.empty()) GTEST_SKIP() << "SmolLM2 GGUF absent (run scripts/fetch_model.sh)";
  const LlamaModel m = LlamaModel::load(path);
  const auto tok = load_tokenizer(m, "");
  EXPECT_EQ(m.config().n_layers, 30);
  EXPECT_EQ(m.config().head_dim, 64);
  EXPECT_EQ(m.config().n_kv_heads, 3);
  const auto tokens =
      tok->encode("The capital of France is Paris. The capital of Germany is", false, false);
  const size_t vocab = static_cast<size_t>(m.config().vocab_size);
  std::vector<float> l32, l16;
  for (auto [codec, out] :
       {std::pair<const char*, std::vector<float>*>{"f32", &l32}, {"f16", &l16}}) {
    RuntimeOptions rt;
    rt.key_codec = rt.value_codec = codec;
    Transformer tf(m, rt);
    tf.forward(tf.add_sequence(), tokens.data(), tokens.size(), *out, false);
  }
  EXPECT_EQ(argmax(l32.data(), vocab), argmax(l16.data(), vocab));
  EXPECT_EQ(tok->decode(argmax(l32.data(), vocab), -1), " Berlin");
}

}  // namespace
}  // namespace polarquant::model
