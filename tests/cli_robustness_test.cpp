// The bad inputs of docs/RELIABILITY.md through the built CLI: each ends with status 2 and a
// message naming what was wrong (or, for inputs that are valid, with status 0), never a crash.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "cli_test_util.h"
#include "core/bytes.h"
#include "model_test_util.h"

namespace polarquant {
namespace {

using testing::run_cli;

std::string tmp(const std::string& name) {
  return ::testing::TempDir() + "/robust_" + name;
}

bool have_tiny() {
  return std::filesystem::exists(testing::shared_dir() + "/models/stories260K.bin");
}

std::string tiny() {
  const std::string dir = testing::shared_dir() + "/models/";
  return " --model " + dir + "stories260K.bin --tokenizer " + dir + "tok512.bin --threads 1 ";
}

// The JSON object in a command's output (stderr, merged by run_cli, carries progress lines).
nlohmann::json json_of(const std::string& output) {
  return nlohmann::json::parse(output.substr(std::min(output.find('{'), output.size())));
}

void expect_refused(const std::string& args, const std::string& words) {
  const auto r = run_cli(args);
  EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.output.substr(0, 2000);
  EXPECT_NE(r.output.find(words), std::string::npos) << args << "\n" << r.output.substr(0, 2000);
}

// A GGUF with one tensor of the given ggml dims at the given data offset.
std::vector<uint8_t> one_tensor_gguf(std::vector<uint64_t> dims, uint64_t offset) {
  testing::GgufBuilder b;
  b.kv_string("general.architecture", "llama");
  b.tensor("token_embd.weight", {32}, 0, std::vector<uint8_t>(128, 0));
  std::vector<uint8_t> bytes = b.build();
  // Patch the tensor entry: it follows the name "token_embd.weight".
  const std::string name = "token_embd.weight";
  size_t at = std::search(bytes.begin(), bytes.end(), name.begin(), name.end()) - bytes.begin();
  at += name.size();
  const uint32_t n_dims = static_cast<uint32_t>(dims.size());
  std::vector<uint8_t> entry(4);
  std::memcpy(entry.data(), &n_dims, 4);
  for (uint64_t d : dims)
    entry.insert(entry.end(), reinterpret_cast<uint8_t*>(&d), reinterpret_cast<uint8_t*>(&d) + 8);
  const uint32_t type = 0;
  entry.insert(entry.end(), reinterpret_cast<const uint8_t*>(&type),
               reinterpret_cast<const uint8_t*>(&type) + 4);
  entry.insert(entry.end(), reinterpret_cast<uint8_t*>(&offset),
               reinterpret_cast<uint8_t*>(&offset) + 8);
  bytes.erase(bytes.begin() + at, bytes.begin() + at + 4 + 8 + 4 + 8);  // the old 1-dim entry
  bytes.insert(bytes.begin() + at, entry.begin(), entry.end());
  return bytes;
}

TEST(CliRobustness, BadModelFiles) {
  testing::GgufBuilder b;
  b.kv_string("general.architecture", "llama");
  b.kv_u32("llama.block_count", 1);
  b.tensor("token_embd.weight", {32, 4}, 0, std::vector<uint8_t>(512, 0));
  const std::vector<uint8_t> good = b.build();
  write_file_bytes(tmp("trunc.gguf"), std::vector<uint8_t>(good.begin(), good.begin() + 60));
  expect_refused("generate --model " + tmp("trunc.gguf"), "GGUF '" + tmp("trunc.gguf") + "'");
  auto corrupt = good;
  std::fill(corrupt.begin() + 16, corrupt.begin() + 24, 0xff);  // metadata_kv_count
  write_file_bytes(tmp("corrupt.gguf"), corrupt);
  expect_refused("generate --model " + tmp("corrupt.gguf"), "metadata_kv_count");
  write_file_bytes(tmp("dims.gguf"), one_tensor_gguf({1ull << 40, 1ull << 40}, 0));
  expect_refused("generate --model " + tmp("dims.gguf"), "overflows");
  write_file_bytes(tmp("offset.gguf"), one_tensor_gguf({32}, 1ull << 62));
  expect_refused("generate --model " + tmp("offset.gguf"), "extends past the end of the file");
  write_file_bytes(tmp("empty.gguf"), {});
  expect_refused("generate --model " + tmp("empty.gguf"), "empty.gguf");
  expect_refused("generate --model /nonexistent/model.gguf", "/nonexistent/model.gguf");
  for (const char* f : {"trunc", "corrupt", "dims", "offset", "empty"}) {
    std::filesystem::remove(tmp(std::string(f) + ".gguf"));
  }
}

TEST(CliRobustness, BadTextsPromptsAndCodecNames) {
  if (!have_tiny()) GTEST_SKIP() << "../shared/models absent";
  { std::ofstream empty(tmp("empty.txt")); }
  expect_refused("perplexity" + tiny() + "-f " + tmp("empty.txt") + " --ctx 64",
                 "fewer than one chunk");
  expect_refused("niah" + tiny() + "-f " + tmp("empty.txt") + " --contexts 128 --depths 0.5",
                 "context 128 needs 27 haystack tokens; the text gives 1");
  expect_refused("niah" + tiny() + "--contexts 64", "context 64 leaves no room for a haystack");
  expect_refused("perplexity" + tiny() + "-f /nonexistent.txt --ctx 64", "/nonexistent.txt");
  expect_refused("generate" + tiny() + "-ctk nosuch -n 2", "unknown codec 'nosuch'");
  // A prompt longer than the context (512) is refused before anything is printed or computed.
  std::string long_prompt;
  for (int i = 0; i < 400; ++i) long_prompt += "once upon a time ";
  const auto r = run_cli("generate" + tiny() + "-n 2 -p '" + long_prompt + "'");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.output.rfind("polarquant: error: the prompt is", 0), 0u) << r.output.substr(0, 300);
  // Invalid UTF-8 is text like any other: byte tokens.
  const auto utf =
      run_cli("generate" + tiny() +
              "-n 3 --no-compare --json -p \"$(printf '\\377\\376\\303 x')\" 2>/dev/null");
  EXPECT_EQ(utf.exit_code, 0) << utf.output;
  // An empty prompt starts from BOS.
  EXPECT_EQ(run_cli("generate" + tiny() + "-n 3 --no-compare -p ''").exit_code, 0);
  std::filesystem::remove(tmp("empty.txt"));
}

TEST(CliRobustness, LlamaStyleFlagsAndCodecListsAreCheckedFirst) {
  if (!have_tiny()) GTEST_SKIP() << "../shared/models absent";
  {
    std::ofstream text(tmp("text.txt"));
    for (int i = 0; i < 60; ++i) text << "Once upon a time there was a cat. ";
  }
  const std::string ppl = "perplexity" + tiny() + "-f " + tmp("text.txt") + " --ctx 64 ";
  // -ctk reached perplexity as "-c tk" once; now it is the key codec (q4_0 cannot code dim 8).
  expect_refused(ppl + "-ctk q4_0 -ctv q4_0", "-ctk/-ctv: q4_0: dim 8");
  auto r = run_cli(ppl + "-ctk f16 -ctv=bf16 --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(json_of(r.output)["codecs"][0]["value_codec"], "bf16");
  // A bad entry anywhere in the list stops the command before the fp16 reference runs.
  r = run_cli(ppl + "--codecs f16,kivi4,paper,nosuch");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("--codecs entry 4 ('nosuch')"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("perplexity: "), std::string::npos) << "work started: " << r.output;
  expect_refused("niah" + tiny() + "--contexts 64 --codecs f16,polar-9", "--codecs entry 2");
  r = run_cli("niah" + tiny() + "--contexts 64,4096 --depths 0.5");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("niah context 4096 exceeds the model's 512"), std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("niah: "), std::string::npos) << "work started: " << r.output;
  r = run_cli(ppl + "--codecs kivi4,f16 --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(json_of(r.output)["codecs"][0]["key_codec"], "kivi4k");
  expect_refused("generate" + tiny() + "--bogus", "--bogus");
  std::filesystem::remove(tmp("text.txt"));
}

TEST(CliRobustness, OnlineCodebooksFlag) {
  if (!have_tiny()) GTEST_SKIP() << "../shared/models absent";
  {
    std::ofstream text(tmp("online.txt"));
    for (int i = 0; i < 60; ++i) text << "Once upon a time there was a cat. ";
  }
  const std::string ppl = "perplexity" + tiny() + "-f " + tmp("online.txt") +
                          " --ctx 64 -ctk paper -ctv paper --json --codebooks ";
  const auto analytic = run_cli(ppl + "analytic");
  const auto online = run_cli(ppl + "online");
  ASSERT_EQ(analytic.exit_code, 0) << analytic.output;
  ASSERT_EQ(online.exit_code, 0) << online.output;
  const double a = json_of(analytic.output)["codecs"][0]["ppl"];
  const double o = json_of(online.output)["codecs"][0]["ppl"];
  EXPECT_NE(a, o);  // the flag reaches the cache: other codebooks, other codes
  EXPECT_EQ(json_of(run_cli(ppl + "online").output)["codecs"][0]["ppl"], o);  // deterministic
  expect_refused(ppl + "bogus", "--codebooks");
  expect_refused(ppl + "online --key-codebooks " + tmp("online.txt"), "cannot be combined");
  expect_refused(
      "generate" + tiny() + "-n 2 --codebooks online --prompt-cache " + tmp("online.pqkv"),
      "--prompt-cache does not store online codebooks");
  std::filesystem::remove(tmp("online.txt"));
}

}  // namespace
}  // namespace polarquant
