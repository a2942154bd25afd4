// `polarquant niah`: needle-in-a-haystack recall grid (context length x needle depth) per K/V
// codec.
#include <polarquant/error.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "command.h"
#include "eval/niah.h"
#include "model_options.h"

namespace polarquant::cli {
namespace {

constexpr const char* kFiller =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";

struct NiahArgs {
  ModelFlags model;
  std::string text;
  std::string codecs = std::string("f16,") + kDefaultPolarPair;
  std::string contexts = "1024,2048,4096";
  std::string depths = "0,0.25,0.5,0.75,1";
  eval::NiahConfig config;
};

template <typename T>
std::vector<T> parse_numbers(const std::string& list, const char* flag) {
  std::vector<T> out;
  for (const auto& item : split_list(list)) {
    try {
      size_t used = 0;
      const double v = std::stod(item, &used);
      if (used != item.size()) throw std::invalid_argument(item);
      out.push_back(static_cast<T>(v));
    } catch (const std::exception&) {
      throw_invalid(std::string(flag) + ": '" + item + "' is not a number");
    }
  }
  if (out.empty()) throw_invalid(std::string(flag) + " is empty");
  return out;
}

void run(NiahArgs& a, CLI::App* cmd) {
  finish_codec_flags(a.model);
  LoadedModel lm = load_model(a.model);
  eval::NiahConfig& cfg = a.config;
  cfg.contexts = parse_numbers<int>(a.contexts, "--contexts");
  cfg.depths = parse_numbers<double>(a.depths, "--depths");
  cfg.codecs.clear();
  // -ctk/-ctv given explicitly add their pair; --codecs lists codecs used for both K and V.
  for (const auto& c : split_list(a.codecs)) cfg.codecs.push_back(parse_codec_choice(c));
  const CodecPair defaults = codec_pair(kDefaultPolarPair);
  if (a.model.key_codec != defaults.key || a.model.value_codec != defaults.value) {
    cfg.codecs.push_back({a.model.key_codec, a.model.value_codec});
  }
  check_codecs(a.model, cfg.codecs, lm.model->config().head_dim);
  cfg.runtime = runtime_options(a.model);
  int max_ctx = 0;
  for (int c : cfg.contexts) max_ctx = std::max(max_ctx, c);
  std::string text;
  if (a.text.empty()) {
    // No --text: the filler of the passkey retrieval test (Mohtashami & Jaggi, 2023), repeated
    // (each repetition is more than 4 tokens).
    for (int i = 0; i <= max_ctx / 4; ++i) text += kFiller;
  } else {
    text = read_text_file(a.text);
  }
  const std::vector<int> haystack =
      tokenize_prefix(*lm.tokenizer, text, static_cast<size_t>(max_ctx));
  const std::string source = a.text.empty() ? "the built-in filler text" : a.text;
  Progress progress("niah");
  cfg.progress = [&](size_t done, size_t total) { progress.update(done, total); };
  const eval::NiahReport r = eval::run_niah(*lm.model, *lm.tokenizer, haystack, cfg);

  if (a.model.json) {
    nlohmann::json cells = nlohmann::json::array();
    for (const auto& c : r.cells) {
      cells.push_back({{"ctx", c.ctx},
                       {"depth", c.depth},
                       {"codec", c.codec.label()},
                       {"recalled", c.recalled},
                       {"margin", c.margin},
                       {"output", c.output}});
    }
    nlohmann::json recall = nlohmann::json::object();
    nlohmann::json margin = nlohmann::json::object();
    for (size_t k = 0; k < cfg.codecs.size(); ++k) {
      recall[cfg.codecs[k].label()] = r.recall[k];
      margin[cfg.codecs[k].label()] = r.mean_margin[k];
    }
    std::printf("%s\n", nlohmann::json({{"model", a.model.model},
                                        {"text", source},
                                        {"needle", cfg.needle},
                                        {"recall", recall},
                                        {"mean_margin", margin},
                                        {"cells", cells}})
                            .dump(2)
                            .c_str());
    return;
  }
  std::printf(
      "needle \"%s\" in %s; recalled cells marked +, with the answer's logit margin (negative: "
      "how far the model was from choosing it)\n",
      cfg.needle.c_str(), source.c_str());
  for (size_t k = 0; k < cfg.codecs.size(); ++k) {
    std::printf("\n%s: recall %.1f%%, mean margin %.2f\n%8s", cfg.codecs[k].label().c_str(),
                100.0 * r.recall[k], r.mean_margin[k], "ctx\\depth");
    for (double d : cfg.depths) std::printf(" %7.2f", d);
    for (int ctx : cfg.contexts) {
      std::printf("\n%8d ", ctx);
      for (double d : cfg.depths) {
        for (const auto& c : r.cells) {
          if (c.ctx == ctx && c.depth == d && c.codec.label() == cfg.codecs[k].label()) {
            std::printf(" %s%6.1f", c.recalled ? "+" : "-", c.margin);
          }
        }
      }
    }
    std::printf("\n");
  }
}

const CommandRegistration registration("niah", [](CLI::App& app) {
  auto args = std::make_shared<NiahArgs>();
  CLI::App* cmd = app.add_subcommand("niah", "needle-in-a-haystack recall grid per KV codec");
  add_model_flags(cmd, args->model, kDefaultPolarPair);
  cmd->add_option("--text,-f", args->text,
                  "haystack text file (default: a built-in filler text, repeated)");
  cmd->add_option("--codecs", args->codecs,
                  "comma-separated codecs, each NAME (K and V) or KEY/VALUE")
      ->capture_default_str();
  cmd->add_option("--contexts", args->contexts, "comma-separated context lengths (tokens)")
      ->capture_default_str();
  cmd->add_option("--depths", args->depths, "comma-separated needle depths in [0, 1]")
      ->capture_default_str();
  cmd->add_option("--needle", args->config.needle, "the fact sentence")->capture_default_str();
  cmd->add_option("--question", args->config.question, "the question asked after the text")
      ->capture_default_str();
  cmd->add_option("--answer-prefix", args->config.answer_prefix,
                  "start of the answer, fed to the model")
      ->capture_default_str();
  cmd->add_option("--answer", args->config.answer,
                  "text whose presence in the output counts as recall")
      ->capture_default_str();
  cmd->callback([args, cmd] { run(*args, cmd); });
});

}  // namespace
}  // namespace polarquant::cli
