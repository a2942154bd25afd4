// The `polarquant` command: dispatches to the subcommands registered in tools/cli/*.cpp.
#include "command.h"

#include <polarquant/error.h>

#ifdef POLARQUANT_WITH_CUDA
#include "cuda_model/cuda_transformer.h"
#endif

#include <algorithm>
#include <cstdio>
#include <exception>

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
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const polarquant::Error& e) {
    std::fprintf(stderr, "polarquant: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "polarquant: unexpected error: %s\n", e.what());
    return 3;
  }
  return 0;
}
