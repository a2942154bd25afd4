// Every `build/release/polarquant ...` command README.md shows runs and exits with 0: fast ones as
// written, long ones with smaller sizes (the edits are listed beside each). One test per command
// (each gets ctest's timeout; the sanitizer build is slow). A README command this table does not
// know fails its test, so a new example comes with its check. Commands that need the default
// model, ../shared or a CUDA build with a GPU skip with a message when those are absent.
#include <gtest/gtest.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include "cli_test_util.h"
#include "core/bytes.h"
#include "model_test_util.h"

namespace polarquant {
namespace {

struct Example {
  Example(std::vector<std::pair<std::string, std::string>> edits_ = {}, bool model = false,
          bool shared = false, bool cuda = false, std::string prepare_ = "", std::string file_ = "")
      : edits(std::move(edits_)),
        needs_model(model),
        needs_shared(shared),
        needs_cuda(cuda),
        prepare(std::move(prepare_)),
        needs_file(std::move(file_)) {}
  std::vector<std::pair<std::string, std::string>> edits;  // replace first with second
  bool needs_model;                                        // SmolLM2 (scripts/fetch_model.sh)
  bool needs_shared;                                       // ../shared/data
  bool needs_cuda;
  std::string prepare;     // a command that makes this one's input (run first)
  std::string needs_file;  // another model file (~ is $HOME), e.g. the second model's
};

std::string tmp(const std::string& name) {
  return ::testing::TempDir() + "/readme_" + name;
}

const std::map<std::string, Example>& examples() {
  static const std::map<std::string, Example> table = {
      {"generate", {{{"generate", "generate -n 8"}}, true}},
      {"codec-stats --preset paper --dim 128", {}},
      {"compare --data keylike --markdown", {}},
      {"perplexity -f ../shared/data/emma.txt --ctx 2048 --ctk paper --ctv paper",
       {{{"--ctx 2048", "--ctx 128"}}, true, true}},
      {"perplexity -f ../shared/data/emma.txt --codecs q4_0,paper,polar4kv,polar-544444/polar37 "
       "--json > q.json",
       {{{"--json", "--ctx 128 --json"}, {"q.json", tmp("q.json")}}, true, true}},
      {"niah --ctk paper --ctv paper",
       {{{"--ctv paper", "--ctv paper --contexts 256 --depths 0.5"}}, true}},
      {"dump-kv -f FILE.txt -o real.kv",
       {{{"FILE.txt", "@TEXT@ --tokens 64"}, {"real.kv", tmp("real.kv")}}, true}},
      {"compare --data real.kv --by-layer --center-keys 256 --codecs kivi4,polar4kv,polar4kv/f16",
       {{{"real.kv", tmp("layers_real.kv")},
         {"--center-keys 256", "--center-keys 32 --min-time 0.001"}},
        true,
        false,
        false,
        "dump-kv -f @TEXT@ --tokens 64 --layers 0,1 -o " + tmp("layers_real.kv")}},
      {"train-codebooks --data real.kv -o books.pqcb",
       {{{"real.kv", tmp("books_real.kv")}, {"books.pqcb", tmp("books.pqcb")}},
        true,
        false,
        false,
        "dump-kv -f @TEXT@ --tokens 64 -o " + tmp("books_real.kv")}},
      {"generate --prompt-cache prompt.pqkv",
       {{{"prompt.pqkv", tmp("prompt.pqkv") + " -n 8"}}, true}},
      {"generate --device cuda", {{{"cuda", "cuda -n 8"}}, true, false, true}},
      {"bench-serve --shape llama3-8b -b 8 -P 32768 -g 64 --codecs f16,paper,polar37",
       {{{"-P 32768 -g 64", "-P 256 -g 4"}}, false, false, true}},
      {"bench-serve --shape llama3-8b -b 8 -P 32768 --plan", {{}, false, false, true}},
      {"generate --model ~/.cache/polarquant/models/gemma-3-270m-q4_k_m.gguf",
       {{{".gguf", ".gguf -n 8"}},
        false,
        false,
        false,
        "",
        "~/.cache/polarquant/models/gemma-3-270m-q4_k_m.gguf"}},
  };
  return table;
}

// The README's commands, in order, without the "build/release/polarquant " prefix and comments.
std::vector<std::string> readme_commands() {
  std::ifstream in(std::string(POLARQUANT_SOURCE_DIR) + "/README.md");
  std::vector<std::string> out;
  const std::string prefix = "build/release/polarquant ";
  for (std::string line; std::getline(in, line);) {
    const size_t at = line.find(prefix);
    if (at == std::string::npos || line.find("    ") != 0) continue;  // indented code only
    std::string cmd = line.substr(at + prefix.size());
    cmd = cmd.substr(0, cmd.find(" #"));
    while (!cmd.empty() && cmd.back() == ' ') cmd.pop_back();
    out.push_back(cmd);
  }
  return out;
}

// The text file of dump-kv: one per test process (ctest runs the tests in parallel).
std::string text_path() {
  return tmp(std::to_string(getpid()) + "_text.txt");
}

// The command with its edits, @TEXT@ replaced by text_path() and ../shared by the shared folder.
std::string apply_edits(std::string run, const Example& e) {
  for (const auto& [from, to] : e.edits) {
    const size_t at = run.find(from);
    if (at == std::string::npos) {
      ADD_FAILURE() << "edit '" << from << "' does not apply to: " << run;
      continue;
    }
    run.replace(at, from.size(), to);
  }
  if (const size_t at = run.find("@TEXT@"); at != std::string::npos)
    run.replace(at, 6, text_path());
  // README paths (../shared/...) are relative to the project root.
  const std::string shared = testing::shared_dir();
  for (size_t at = 0; (at = run.find("../shared", at)) != std::string::npos;) {
    run.replace(at, 9, shared);
    at += shared.size();
  }
  return run;
}

int run_logged(const std::string& args) {
  const auto r = testing::run_cli(args + " < /dev/null");
  std::printf("[ ran      ] polarquant %s: exit %d\n", args.c_str(), r.exit_code);
  if (r.exit_code != 0) {
    std::printf("%s\n",
                r.output.substr(r.output.size() > 2000 ? r.output.size() - 2000 : 0).c_str());
  }
  std::fflush(stdout);
  return r.exit_code;
}

class ReadmeExample : public ::testing::TestWithParam<std::string> {};

TEST_P(ReadmeExample, Runs) {
  const std::string& cmd = GetParam();
  const auto it = examples().find(cmd);
  ASSERT_NE(it, examples().end()) << "README example without an entry in readme_examples_test.cpp: "
                                  << cmd;
  const Example& e = it->second;
  const bool have_model = !testing::smollm2_path().empty();
  const bool have_shared = std::filesystem::exists(testing::shared_dir() + "/data/emma.txt");
  // A CUDA build (bench-serve exists) on a machine with a GPU.
  const bool have_cuda =
      e.needs_cuda &&
      testing::run_cli("bench-serve --plan").output.find("needs a build with CUDA") ==
          std::string::npos &&
      std::system("nvidia-smi > /dev/null 2>&1") == 0;
  if (e.needs_model && !have_model) GTEST_SKIP() << "needs the default model (fetch_model.sh)";
  if (e.needs_shared && !have_shared) GTEST_SKIP() << "needs ../shared/data";
  if (e.needs_cuda && !have_cuda) GTEST_SKIP() << "needs a CUDA build and a GPU";
  if (!e.needs_file.empty()) {
    const char* home = std::getenv("HOME");
    std::string file = e.needs_file;
    if (file.rfind("~/", 0) == 0) file = std::string(home ? home : "") + file.substr(1);
    if (!std::filesystem::exists(file))
      GTEST_SKIP() << "needs " << e.needs_file << " (scripts/fetch_model.sh gemma3-270m)";
  }
  std::string text;
  for (int i = 0; i < 40; ++i) text += "The quick brown fox jumps over the lazy dog. ";
  write_file_bytes(text_path(), std::vector<uint8_t>(text.begin(), text.end()));
  if (!e.prepare.empty()) {
    ASSERT_EQ(run_logged(apply_edits(e.prepare, Example{})), 0) << e.prepare;
  }
  EXPECT_EQ(run_logged(apply_edits(cmd, e)), 0) << cmd;
  std::filesystem::remove(text_path());
  for (const auto& [from, to] : e.edits) {  // the outputs this command wrote
    if (to.rfind(::testing::TempDir(), 0) == 0) std::filesystem::remove(to.substr(0, to.find(' ')));
  }
}

INSTANTIATE_TEST_SUITE_P(Readme, ReadmeExample, ::testing::ValuesIn(readme_commands()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name = std::to_string(info.index) + "_";
                           for (char c : info.param.substr(0, info.param.find(' '))) {
                             name += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           }
                           return name;
                         });

TEST(ReadmeExamples, TheReadmeHasItsExamples) {
  EXPECT_GE(readme_commands().size(), 10u) << "README.md not found or its examples moved";
}

}  // namespace
}  // namespace polarquant
