// Every `build/release/polarquant ...` command README.md shows runs and exits with 0: fast ones as
// written, long ones with smaller sizes (the edits are listed beside each). A README command this
// table does not know fails the test, so a new example comes with its check. Commands that need
// the default model, ../shared or a CUDA build skip with a message when those are absent.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "cli_test_util.h"
#include "model_test_util.h"

namespace polarquant {
namespace {

struct Example {
  std::vector<std::pair<std::string, std::string>> edits;  // replace first with second
  bool needs_model = false;                                // SmolLM2 (scripts/fetch_model.sh)
  bool needs_shared = false;                               // ../shared/data
  bool needs_cuda = false;
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
       {{{"FILE.txt", tmp("text.txt") + " --tokens 64"}, {"real.kv", tmp("real.kv")}}, true}},
      {"train-codebooks --data real.kv -o books.pqcb",
       {{{"real.kv", tmp("real.kv")}, {"books.pqcb", tmp("books.pqcb")}}, true}},
      {"generate --prompt-cache prompt.pqkv",
       {{{"prompt.pqkv", tmp("prompt.pqkv") + " -n 8"}}, true}},
      {"generate --device cuda", {{{"cuda", "cuda -n 8"}}, true, false, true}},
      {"bench-serve --shape llama3-8b -b 8 -P 32768 -g 64 --codecs f16,paper,polar37",
       {{{"-P 32768 -g 64", "-P 256 -g 4"}}, false, false, true}},
      {"bench-serve --shape llama3-8b -b 8 -P 32768 --plan", {{}, false, false, true}},
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

TEST(ReadmeExamples, EveryCommandRuns) {
  const std::vector<std::string> commands = readme_commands();
  ASSERT_GE(commands.size(), 10u) << "README.md not found or its examples moved";
  {
    std::ofstream text(tmp("text.txt"));
    for (int i = 0; i < 40; ++i) text << "The quick brown fox jumps over the lazy dog. ";
  }
  const bool have_model = !testing::smollm2_path().empty();
  const bool have_shared = std::filesystem::exists(testing::shared_dir() + "/data/emma.txt");
  // A CUDA build (bench-serve exists) on a machine with a GPU.
  const bool have_cuda =
      testing::run_cli("bench-serve --plan").output.find("needs a build with CUDA") ==
          std::string::npos &&
      std::system("nvidia-smi > /dev/null 2>&1") == 0;
  for (const std::string& cmd : commands) {
    SCOPED_TRACE(cmd);
    const auto it = examples().find(cmd);
    if (it == examples().end()) {
      ADD_FAILURE() << "README example without an entry in readme_examples_test.cpp: " << cmd;
      continue;
    }
    const Example& e = it->second;
    if ((e.needs_model && !have_model) || (e.needs_shared && !have_shared) ||
        (e.needs_cuda && !have_cuda)) {
      std::printf("[ skipped  ] %s (needs%s%s%s)\n", cmd.c_str(),
                  e.needs_model && !have_model ? " the default model" : "",
                  e.needs_shared && !have_shared ? " ../shared" : "",
                  e.needs_cuda && !have_cuda ? " a CUDA build" : "");
      continue;
    }
    std::string run = cmd;
    for (const auto& [from, to] : e.edits) {
      const size_t at = run.find(from);
      ASSERT_NE(at, std::string::npos) << "edit '" << from << "' does not apply";
      run.replace(at, from.size(), to);
    }
    // README paths (../shared/...) are relative to the project root.
    const std::string shared = testing::shared_dir();
    for (size_t at = 0; (at = run.find("../shared", at)) != std::string::npos;) {
      run.replace(at, 9, shared);
      at += shared.size();
    }
    const auto r = testing::run_cli(run + " < /dev/null");
    std::printf("[ ran      ] polarquant %s: exit %d\n", run.c_str(), r.exit_code);
    std::fflush(stdout);
    EXPECT_EQ(r.exit_code, 0) << r.output.substr(r.output.size() > 2000 ? r.output.size() - 2000
                                                                        : 0);
  }
  for (const char* f : {"q.json", "text.txt", "real.kv", "books.pqcb", "prompt.pqkv"}) {
    std::filesystem::remove(tmp(f));
  }
}

}  // namespace
}  // namespace polarquant
