// The model commands end to end through the built CLI on the tiny model: llama.cpp-style -ctk/-ctv,
// JSON keys scripts rely on, and clear errors for bad flags.
#include "model_test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace {

struct Result {
  int status = -1;
  std::string out;
};

Result run(const std::string& args) {
  Result r;
  const std::string cmd = std::string(POLARQUANT_CLI_PATH) + " " + args + " 2>/dev/null";
  std::FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) r.out.append(buf, n);
  r.status = pclose(p);
  return r;
}

std::string tiny_flags() {
  const std::string dir = polarquant::testing::shared_dir() + "/models/";
  return "--model " + dir + "stories260K.bin --tokenizer " + dir + "tok512.bin --threads 1";
}

bool have_tiny() {
  return std::filesystem::exists(polarquant::testing::shared_dir() + "/models/stories260K.bin");
}

TEST(ModelCli, GenerateJsonWithLlamaStyleCodecFlags) {
  if (!have_tiny()) GTEST_SKIP() << "../shared/models absent";
  const Result r = run("generate " + tiny_flags() + " -n 40 -ctk f32 -ctv bf16 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["key_codec"], "f32");
  EXPECT_EQ(j["value_codec"], "bf16");
  EXPECT_EQ(j["generated_tokens"], 40);
  EXPECT_EQ(j["text"].get<std::string>().rfind("Once upon a time", 0), 0u);
  EXPECT_GT(j["kv_bytes"].get<size_t>(), 0u);
  EXPECT_LE(j["f16_match_prefix"].get<size_t>(), 40u);
  EXPECT_GE(j["top1_agreement"].get<double>(), 0.0);
}

TEST(ModelCli, DefaultCacheIsThePolarPairAndPairNamesSplitByRole) {
  if (!have_tiny()) GTEST_SKIP() << "../shared/models absent";
  Result r = run("generate " + tiny_flags() + " -n 8 --no-compare --json");
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["key_codec"], "polar-544444");  // head_dim 8 of stories260K: 3 of 6 levels fit
  EXPECT_EQ(j["value_codec"], "polar-422222");
  EXPECT_EQ(j["sink_tokens"], 4);
  EXPECT_EQ(j["recent_tokens"], 32);
  EXPECT_EQ(j["quantize_generated"], true);
  r = run("generate " + tiny_flags() + " -n 8 --no-compare --json --recent 0 --fp16-generated");
  ASSERT_EQ(r.status, 0) << r.out;
  j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["recent_tokens"], 0);
  EXPECT_EQ(j["quantize_generated"], false);
  r = run("generate " + tiny_flags() + " -n 8 --no-compare --json -ctk kivi4 -ctv kivi4");
  ASSERT_EQ(r.status, 0) << r.out;
  j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["key_codec"], "kivi4k");
  EXPECT_EQ(j["value_codec"], "kivi4v");
}

TEST(ModelCli, PerplexityJsonHasThePromisedKeys) {
  if (!have_tiny()) GTEST_SKIP() << "../shared/models absent";
  const std::string text = std::filesystem::temp_directory_path() / "pq_model_cli_text.txt";
  {
    std::ofstream f(text);
    for (int i = 0; i < 8; ++i)
      f << "Once upon a time, there was a little cat. The cat liked to play with a ball. ";
  }
  const Result r =
      run("perplexity " + tiny_flags() + " --text " + text + " --ctx 64 --codecs f32,bf16 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["codecs"].size(), 2u);
  for (const auto& c : j["codecs"]) {
    for (const char* key : {"ppl", "kld_mean", "kld_p99", "top1_agreement", "kv_bytes"}) {
      EXPECT_TRUE(c.contains(key)) << key;
    }
  }
  EXPECT_GT(j["f16_ppl"].get<double>(), 1.0);
  std::filesystem::remove(text);
}

TEST(ModelCli, PerplexityCodecListTakesKeyValuePairs) {
  if (!have_tiny()) GTEST_SKIP() << "../shared/models absent";
  const std::string text = std::filesystem::temp_directory_path() / "pq_model_cli_pairs.txt";
  {
    std::ofstream f(text);
    for (int i = 0; i < 8; ++i)
      f << "Once upon a time, there was a little cat. The cat liked to play with a ball. ";
  }
  const Result r = run("perplexity " + tiny_flags() + " --text " + text +
                       " --ctx 64 --codecs f32/bf16,polar-422,kivi4 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["codecs"].size(), 3u);
  EXPECT_EQ(j["codecs"][0]["key_codec"], "f32");
  EXPECT_EQ(j["codecs"][0]["value_codec"], "bf16");
  EXPECT_EQ(j["codecs"][0]["codec"], "f32/bf16");
  EXPECT_EQ(j["codecs"][1]["key_codec"], "polar-422");
  EXPECT_EQ(j["codecs"][2]["key_codec"], "kivi4k");  // a pair name gives its two codecs
  EXPECT_EQ(j["codecs"][2]["value_codec"], "kivi4v");
  EXPECT_EQ(
      run("perplexity " + tiny_flags() + " --text " + text + " --ctx 64 --codecs f32/").status >> 8,
      2);
  std::filesystem::remove(text);
}

TEST(ModelCli, CodebookFileErrorsExitWithStatus2) {
  if (!have_tiny()) GTEST_SKIP() << "../shared/models absent";
  EXPECT_EQ(run("generate " + tiny_flags() + " -n 2 --key-codebooks /nonexistent.pqcb").status >> 8,
            2);
  EXPECT_EQ(run("generate " + tiny_flags() + " -n 2 -ctv f16 --value-codebooks /nonexistent.pqcb")
                    .status >>
                8,
            2);
}

TEST(ModelCli, BadInputGivesAnErrorNotACrash) {
  if (!have_tiny()) GTEST_SKIP() << "../shared/models absent";
  EXPECT_NE(run("generate " + tiny_flags() + " -ctk nosuchcodec -n 2").status, 0);
  EXPECT_NE(run("generate " + tiny_flags() + " -ctk").status, 0);
  EXPECT_NE(run("generate " + tiny_flags() + " --bogus").status, 0);
  EXPECT_NE(run("generate --model /nonexistent/model.gguf -n 2").status, 0);
  const Result no_tok =
      run("generate --model " + polarquant::testing::shared_dir() + "/models/stories260K.bin -n 2");
  EXPECT_NE(no_tok.status, 0);
}

}  // namespace
