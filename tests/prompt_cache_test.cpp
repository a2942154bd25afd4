// `generate --prompt-cache`: a restored prompt generates bit for bit what the uninterrupted run
// generates (stories260K, and SmolLM2 where present), and the CLI refuses another model, another
// codec, another version, a truncated file and a flipped byte with status 2, leaving the file
// alone.
#include "model/prompt_cache.h"

#include <polarquant/error.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstring>
#include <filesystem>
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
  for (const auto& rt : {polar_options(), [] {
                           auto o = polar_options();
                           o.key_codec = "kivi2k";  // groups of 32 tokens
                           o.value_codec = "kivi2v";
                           o.quantize_generated = false;
                           return o;
                         }()}) {
    SCOPED_TRACE(rt.key_codec);
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
  refused("", "version 9; this build reads version 1");
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
