// Subcommands register themselves: each tools/cli/<name>.cpp defines one static CommandRegistration
// whose setup function adds a CLI11 subcommand and its callback. main.cpp needs no edit for a new
// one.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace polarquant::cli {

using CommandSetup = std::function<void(CLI::App& app)>;

struct CommandEntry {
  std::string name;
  CommandSetup setup;
};

inline std::vector<CommandEntry>& command_registry() {
  static std::vector<CommandEntry> entries;
  return entries;
}

struct CommandRegistration {
  CommandRegistration(std::string name, CommandSetup setup) {
    command_registry().push_back({std::move(name), std::move(setup)});
  }
};

}  // namespace polarquant::cli
