// The `polarquant` command: dispatches to the subcommands registered in tools/cli/*.cpp.
#include "command.h"

#include <polarquant/error.h>

#ifdef POLARQUANT_WITH_CUDA
#include "cuda_model/cuda_transformer.h"
#endif

#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

int main(int argc, char** argv) {
#ifdef POLARQUANT_WITH_CUDA
  polarquant::cuda::register_cuda_runtime();  // --device cuda
#endif
  CLI::App app{"polarquant: PolarQuant KV-cache quantization (arXiv 2502.02617)"};
  app.require_subcommand(1);
  auto& entries = polarquant::cli::command_registry();
  std::sort(entries.begin(), entries.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  for (auto& entry : entries) entry.setup(app);
  // llama.cpp spells the cache types -ctk / -ctv; CLI11 would read "-ctk" as the short flag -c
  // with value "tk" (perplexity has -c), so they become --ctk / --ctv before parsing.
  std::vector<std::string> args;
  for (int i = argc - 1; i >= 1; --i) {
    std::string a = argv[i];
    for (const char* flag : {"-ctk", "-ctv"}) {
      const std::string f = flag;
      if (a == f || a.rfind(f + "=", 0) == 0) a = "-" + a;
    }
    args.push_back(std::move(a));  // CLI11 takes the arguments in reverse order
  }
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    // CLI11 prints the message (or the help); a usage error exits with 2 like every other bad
    // input, --help with 0.
    return app.exit(e) == 0 ? 0 : 2;
  } catch (const polarquant::Error& e) {
    std::fprintf(stderr, "polarquant: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "polarquant: unexpected error: %s\n", e.what());
    return 3;
  }
  return 0;
}
