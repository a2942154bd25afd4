// `generate --prompt-cache`: a restored prompt generates bit for bit what the uninterrupted run
// generates (a synthetic model, stories260K, and SmolLM2 where present; with and without
// --rope-center), and the CLI refuses another model, another codec, another version, a truncated
// file and a flipped byte with status 2, leaving the file alone.
#include "model/prompt_cache.h"

#include <polarquant/error.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "cli_test_util.h"
#include "core/bytes.h"
#include "model/generation.h"
#include "model_test_util.h"

namespace polarquant {
namespace {

using testing::run_cli;

// stdout only (the prompt cache's note goes to stderr).
testing::CliResult run_quiet(const std::string& args) {
  testing::CliResult r;
  std::FILE* p =
      popen((std::string(POLARQUANT_CLI_PATH) + " " + args + " 2>/dev/null").c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) r.output.append(buf, n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

model::RuntimeOptions polar_options() {
  model::RuntimeOptions rt;
  rt.key_codec = "polar-544444";
  rt.value_codec = "polar-422222";
  rt.sink_tokens = 4;
  rt.recent_tokens = 8;
  rt.n_threads = 1;
  rt.prefill_chunk = 16;
  rt.rope_center_keys = false;  // explicit: the tests turn it on where they want it
  return rt;
}

struct GenRun {
  std::vector<int> generated;
  std::vector<float> logits;
  size_t reused = 0;
};

// Greedy generation of n tokens, through a prompt cache file when path is not empty.
GenRun generate(const testing::TinyModel& m, const model::RuntimeOptions& rt,
                const std::vector<int>& prompt, const std::string& path, int n) {
  model::Transformer tf(*m.model, rt);
  model::GenerationOptions gen;
  gen.max_new_tokens = n;
  gen.keep_logits = true;
  gen.stop_at_end = false;
  GenRun r;
  model::GenerationResult g;
  if (path.empty()) {
    g = model::generate(tf, tf.add_sequence(), *m.tokenizer, prompt, gen);
  } else {
    const auto pre = model::prefill_with_prompt_cache(
        tf, model::cache_owner(*m.model, *m.tokenizer), prompt, path, false);
    r.reused = pre.reused;
    g = model::generate_from(tf, pre.seq, *m.tokenizer, prompt, pre.logits, gen);
  }
  r.generated = g.generated;
  r.logits = g.logits;
  return r;
}

void expect_identical(const GenRun& a, const GenRun& b) {
  EXPECT_EQ(a.generated, b.generated);
  ASSERT_EQ(a.logits.size(), b.logits.size());
  EXPECT_EQ(std::memcmp(a.logits.data(), b.logits.data(), a.logits.size() * sizeof(float)), 0);
}

TEST(PromptCache, RestoredGenerationIsBitIdenticalOnStories260K) {
  const auto m = testing::load_stories260k();
  if (!m.model) GTEST_SKIP() << "../shared/models/stories260K.bin absent";
  const std::string path = ::testing::TempDir() + "/prompt_cache_tiny.pqkv";
  std::filesystem::remove(path);
  const std::vector<int> prompt =
      m.tokenizer->encode("Once upon a time, there was a little girl named Lily. She", true, false);
  ASSERT_GT(prompt.size(), 16u);
  for (const auto& rt : {polar_options(),
                         [] {
                           auto o = polar_options();
                           o.key_codec = "kivi2k";  // groups of 32 tokens
                           o.value_codec = "kivi2v";
                           o.quantize_generated = false;
                           return o;
                         }(),
                         [] {
                           auto o = polar_options();
                           o.rope_center_keys = true;
                           return o;
                         }()}) {
    SCOPED_TRACE(rt.key_codec + (rt.rope_center_keys ? " --rope-center" : ""));
    std::filesystem::remove(path);
    const GenRun plain = generate(m, rt, prompt, "", 24);
    const GenRun first = generate(m, rt, prompt, path, 24);  // computes and saves
    EXPECT_EQ(first.reused, 0u);
    ASSERT_TRUE(std::filesystem::exists(path));
    const GenRun restored = generate(m, rt, prompt, path, 24);
    EXPECT_EQ(restored.reused, prompt.size());
    expect_identical(plain, first);
    expect_identical(plain, restored);

    // A file holding a prefix that ends on a prefill chunk boundary (16 tokens): the rest of the
    // prompt is computed in the same chunks as in one uninterrupted prefill.
    std::filesystem::remove(path);
    const std::vector<int> head(prompt.begin(), prompt.begin() + 16);
    generate(m, rt, head, path, 0);
    const GenRun extended = generate(m, rt, prompt, path, 24);
    EXPECT_EQ(extended.reused, 16u);
    expect_identical(plain, extended);
  }
  std::filesystem::remove(path);
}

// A llama2.c checkpoint with seeded Gaussian weights (dim 64: 2 query heads of 32 sharing one KV
// head, hidden 96, 2 layers, vocab 64, context 512): a model that needs no files.
std::vector<uint8_t> synthetic_llama2c() {
  const int32_t header[7] = {64, 96, 2, 2, 1, 64, 512};
  const size_t d = 64, hd = 96, layers = 2, kv = 32, vocab = 64, context = 512;
  std::vector<uint8_t> bytes(sizeof header);
  std::memcpy(bytes.data(), header, sizeof header);
  std::mt19937 rng(17);
  auto put = [&](size_t n, float scale, float offset) {
    std::normal_distribution<float> g(offset, scale);
    for (size_t i = 0; i < n; ++i) {
      const float x = g(rng);
      const auto* b = reinterpret_cast<const uint8_t*>(&x);
      bytes.insert(bytes.end(), b, b + 4);
    }
  };
  const float w = 1.0f / std::sqrt(static_cast<float>(d));
  put(vocab * d, 1.0f, 0.0f);      // token embedding (also the classifier)
  put(layers * d, 0.1f, 1.0f);     // attention norms
  put(layers * d * d, w, 0.0f);    // wq
  put(layers * kv * d, w, 0.02f);  // wk (a key bias for the centering to remove)
  put(layers * kv * d, w, 0.0f);   // wv
  put(layers * d * d, w, 0.0f);    // wo
  put(layers * d, 0.1f, 1.0f);     // ffn norms
  put(layers * hd * d, w, 0.0f);   // w1
  put(layers * d * hd, 1.0f / std::sqrt(static_cast<float>(hd)), 0.0f);  // w2
  put(layers * hd * d, w, 0.0f);                                         // w3
  put(d, 0.1f, 1.0f);                                                    // final norm
  put(context * (d / 2), 0.0f, 0.0f);                                    // freq_cis (unused)
  return bytes;
}

// Teacher-forced logits: after the prompt (through the prompt cache when path is not empty), then
// after each of `decode` more tokens.
std::vector<float> forced_logits(const model::LlamaModel& m, const model::RuntimeOptions& rt,
                                 const std::vector<int>& prompt, const std::string& path,
                                 size_t decode, size_t* reused = nullptr) {
  model::Transformer tf(m, rt);
  std::vector<float> logits, all;
  SequenceId seq = 0;
  if (path.empty()) {
    seq = tf.add_sequence();
    tf.forward(seq, prompt.data(), prompt.size(), logits, false);
  } else {
    CacheOwner owner;
    owner.architecture = "llama/llama2c";
    owner.n_layers = 2;
    owner.n_heads = 2;
    owner.n_kv_heads = 1;
    owner.head_dim = 32;
    owner.vocab_size = 64;
    owner.model_hash = 0x5eed;
    auto pre = model::prefill_with_prompt_cache(tf, owner, prompt, path, false);
    seq = pre.seq;
    logits = std::move(pre.logits);
    if (reused != nullptr) *reused = pre.reused;
  }
  all = logits;
  for (size_t i = 0; i < decode; ++i) {
    const int token = static_cast<int>((i * 29 + 3) % 64);
    tf.forward(seq, &token, 1, logits, false);
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return all;
}

// With --rope-center the file holds each layer's pre-RoPE key mean and the frequencies, and the
// restored cache (a whole prompt, or a prefix ending on a prefill chunk) continues bit for bit.
TEST(PromptCache, RopeCenteredCacheRestoresBitIdenticallyOnASyntheticModel) {
  const auto bytes = synthetic_llama2c();
  const auto m = model::LlamaModel::parse_llama2c(bytes.data(), bytes.size(), "synthetic");
  std::vector<int> prompt(150);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int>((i * 13 + 5) % 64);
  const std::string path = ::testing::TempDir() + "/prompt_cache_rope.pqkv";
  std::vector<float> without_rope;
  for (const bool rope : {false, true}) {
    SCOPED_TRACE(rope ? "--rope-center" : "one mean");
    auto rt = polar_options();
    rt.rope_center_keys = rope;
    std::filesystem::remove(path);
    const auto plain = forced_logits(m, rt, prompt, "", 40);
    size_t reused = 1;
    EXPECT_EQ(forced_logits(m, rt, prompt, path, 40, &reused), plain);  // computes and saves
    EXPECT_EQ(reused, 0u);
    EXPECT_EQ(forced_logits(m, rt, prompt, path, 40, &reused), plain);
    EXPECT_EQ(reused, prompt.size());
    const std::vector<int> head(prompt.begin(), prompt.begin() + 64);  // 4 chunks of 16
    std::filesystem::remove(path);
    forced_logits(m, rt, head, path, 0);
    EXPECT_EQ(forced_logits(m, rt, prompt, path, 40, &reused), plain);
    EXPECT_EQ(reused, 64u);
    if (rope) {
      EXPECT_NE(plain, without_rope) << "--rope-center changed nothing";
    } else {
      without_rope = plain;
    }
    // The file of one setting is refused by the other, naming it.
    rt.rope_center_keys = !rope;
    EXPECT_THROW(forced_logits(m, rt, prompt, path, 0), Error);
  }
  std::filesystem::remove(path);
}

TEST(PromptCache, ModelHashTellsModelsApart) {
  const auto m = testing::load_stories260k();
  if (!m.model) GTEST_SKIP() << "../shared/models/stories260K.bin absent";
  const CacheOwner a = model::cache_owner(*m.model, *m.tokenizer);
  EXPECT_EQ(a.model_hash, model::cache_owner(*m.model, *m.tokenizer).model_hash);
  EXPECT_EQ(a.architecture, "llama/llama2c");
  EXPECT_EQ(a.head_dim, 8u);
  // The same weights with another file's bytes: a modified copy of the checkpoint.
  auto bytes = read_file_bytes(testing::shared_dir() + "/models/stories260K.bin");
  bytes[28] ^= 1;  // the first weight of the token embedding
  const auto other = model::LlamaModel::parse_llama2c(bytes.data(), bytes.size(), "copy");
  EXPECT_NE(model::cache_owner(other, *m.tokenizer).model_hash, a.model_hash);
}

std::string tiny_flags() {
  const std::string dir = testing::shared_dir() + "/models/";
  return "--model " + dir + "stories260K.bin --tokenizer " + dir + "tok512.bin --threads 1";
}

TEST(PromptCache, CliRestoresAndRefusesBadFiles) {
  if (!std::filesystem::exists(testing::shared_dir() + "/models/stories260K.bin")) {
    GTEST_SKIP() << "../shared/models absent";
  }
  const std::string path = ::testing::TempDir() + "/prompt_cache_cli.pqkv";
  std::filesystem::remove(path);
  const std::string base = "generate " + tiny_flags() + " -n 20 --no-compare --json -p 'Once upon'";
  const auto plain = run_quiet(base);
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  const auto text = nlohmann::json::parse(plain.output)["text"];
  // --prompt-cache-ro on a missing file computes and writes nothing.
  auto r = run_quiet(base + " --prompt-cache-ro --prompt-cache " + path);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_FALSE(std::filesystem::exists(path));
  for (int i = 0; i < 2; ++i) {
    r = run_quiet(base + " --prompt-cache " + path);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const auto j = nlohmann::json::parse(r.output);
    EXPECT_EQ(j["text"], text);
    EXPECT_EQ(j["prompt_cache"]["saved"], i == 0);
    EXPECT_EQ(j["prompt_cache"]["reused_tokens"].get<size_t>() > 0, i == 1);
  }
  const auto good = read_file_bytes(path);
  auto refused = [&](const std::string& flags, const std::string& words) {
    const auto before = read_file_bytes(path);
    const auto res = run_cli(base + " --prompt-cache " + path + " " + flags);
    EXPECT_EQ(res.exit_code, 2) << res.output;
    EXPECT_NE(res.output.find(words), std::string::npos) << res.output;
    EXPECT_EQ(read_file_bytes(path), before) << "a refused file was overwritten";
  };
  refused("-ctk bf16", "key codec 'polar-544444', but this run has 'bf16'");
  refused("--sink 0", "--sink");
  auto bytes = good;
  bytes[8] = 9;
  write_file_bytes(path, bytes);
  refused("", "version 9; this build reads versions 1 to 3");
  bytes = good;
  bytes.resize(bytes.size() / 2);
  write_file_bytes(path, bytes);
  refused("", "truncated");
  bytes = good;
  bytes[bytes.size() / 2] ^= 0x01;
  write_file_bytes(path, bytes);
  refused("", "corrupt: CRC-32C");
  write_file_bytes(path, good);
  const std::string smollm2 = testing::smollm2_path();
  if (!smollm2.empty()) {
    const auto res =
        run_cli("generate --model " + smollm2 + " -n 2 --no-compare --json --prompt-cache " + path);
    EXPECT_EQ(res.exit_code, 2) << res.output;
    EXPECT_NE(res.output.find("was written for model architecture 'llama/llama2c'"),
              std::string::npos)
        << res.output;
  }
  const auto cuda = run_cli(base + " --device cuda --prompt-cache " + path);
  EXPECT_EQ(cuda.exit_code, 2) << cuda.output;
  EXPECT_NE(cuda.output.find("CPU runtime only"), std::string::npos) << cuda.output;
  EXPECT_EQ(run_cli(base + " --prompt-cache-ro").exit_code, 2);
  // --rope-center: saved, then restored, giving the text of a run without the file.
  std::filesystem::remove(path);
  const auto rope = run_quiet(base + " --rope-center");
  ASSERT_EQ(rope.exit_code, 0) << rope.output;
  for (int i = 0; i < 2; ++i) {
    r = run_quiet(base + " --rope-center --prompt-cache " + path);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const auto j = nlohmann::json::parse(r.output);
    EXPECT_EQ(j["text"], nlohmann::json::parse(rope.output)["text"]);
    EXPECT_EQ(j["prompt_cache"]["reused_tokens"].get<size_t>() > 0, i == 1);
  }
  // A run without it refuses the file (--no-rope-center once --rope-center is the default).
  const bool has_off =
      run_cli("generate --help").output.find("--no-rope-center") != std::string::npos;
  refused(has_off ? "--no-rope-center" : "",
          "RoPE-aware key centering (1: --rope-center) 1, but this run has 0");
  std::filesystem::remove(path);
}

TEST(PromptCache, CliRestoredGenerationMatchesOnSmolLM2) {
  const std::string model = testing::smollm2_path();
  if (model.empty()) GTEST_SKIP() << "SmolLM2 absent (scripts/fetch_model.sh)";
  const std::string path = ::testing::TempDir() + "/prompt_cache_smollm2.pqkv";
  std::filesystem::remove(path);
  const std::string base = "generate --model " + model + " -n 12 --no-compare --json";
  const auto plain = run_quiet(base);
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  for (int i = 0; i < 2; ++i) {
    const auto r = run_quiet(base + " --prompt-cache " + path);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const auto j = nlohmann::json::parse(r.output);
    EXPECT_EQ(j["text"], nlohmann::json::parse(plain.output)["text"]);
    EXPECT_EQ(j["prompt_cache"]["saved"], i == 0);
  }
  RecordProperty("file_bytes", std::to_string(std::filesystem::file_size(path)));
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace polarquant
