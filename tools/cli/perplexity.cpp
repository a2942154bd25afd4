// `polarquant perplexity`: perplexity of a text with each K/V codec, plus the KL divergence of
// every next-token distribution from the fp16-cache run (mean and 99th percentile), top-1 agreement
// and the cache's bytes.
#include <polarquant/error.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <string>
#include <vector>

#include "command.h"
#include "eval/perplexity.h"
#include "model_options.h"

namespace polarquant::cli {
namespace {

struct PerplexityArgs {
  ModelFlags model;
  std::string text;
  std::string codecs;
  int ctx = 2048;
  int chunks = 1;
  bool reference_attention = false;
};

void run(PerplexityArgs& a, CLI::App* cmd) {
  finish_codec_flags(a.model);
  LoadedModel lm = load_model(a.model);
  eval::PerplexityConfig cfg;
  cfg.ctx = a.ctx;
  cfg.max_chunks = a.chunks;
  cfg.runtime = runtime_options(a.model);
  cfg.runtime.use_fused = !a.reference_attention;
  if (!a.codecs.empty()) {
    for (const auto& c : split_list(a.codecs)) cfg.codecs.push_back(parse_codec_choice(c));
  }
  check_codecs(a.model, cfg.codecs, lm.model->config().head_dim);
  if (cfg.codecs.empty()) cfg.codecs.push_back({a.model.key_codec, a.model.value_codec});
  const std::string text = read_text_file(a.text);
  const size_t needed =
      static_cast<size_t>(a.ctx) * static_cast<size_t>(a.chunks > 0 ? a.chunks : 1 << 20);
  const std::vector<int> tokens = tokenize_prefix(*lm.tokenizer, text, needed);
  Progress progress("perplexity");
  cfg.progress = [&](size_t done, size_t total) { progress.update(done, total); };
  const eval::PerplexityReport r = eval::evaluate_perplexity(*lm.model, tokens, cfg);
  if (a.model.json) {
    nlohmann::json j = {{"model", a.model.model},
                        {"text", a.text},
                        {"ctx", r.ctx},
                        {"chunks", r.chunks},
                        {"scored_tokens", r.scored_tokens},
                        {"f16_ppl", r.baseline.ppl},
                        {"f16_kv_bytes", r.baseline.kv_bytes}};
    nlohmann::json rows = nlohmann::json::array();
    for (const auto& q : r.codecs) {
      rows.push_back({{"codec", q.codec.label()},
                      {"key_codec", q.codec.key_codec},
                      {"value_codec", q.codec.value_codec},
                      {"ppl", q.ppl},
                      {"ppl_change_vs_f16", q.ppl / r.baseline.ppl - 1.0},
                      {"kld_mean", q.kld_mean},
                      {"kld_p99", q.kld_p99},
                      {"top1_agreement", q.top1_agreement},
                      {"kv_bytes", q.kv_bytes},
                      {"kv_fp16_bytes", q.kv_fp16_bytes},
                      {"seconds", q.seconds}});
    }
    j["codecs"] = rows;
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("%s: %zu chunk(s) of %d tokens, %zu scored tokens\n", a.text.c_str(), r.chunks, r.ctx,
              r.scored_tokens);
  std::printf("%-14s %10s %9s %11s %11s %8s %12s %9s\n", "codec (K/V)", "ppl", "vs f16", "KLD mean",
              "KLD p99", "top-1", "KV bytes", "seconds");
  std::printf("%-14s %10.4f %9s %11s %11s %8s %12zu %9.1f\n", "f16 (ref)", r.baseline.ppl, "", "",
              "", "", r.baseline.kv_bytes, r.baseline.seconds);
  for (const auto& q : r.codecs) {
    std::printf("%-14s %10.4f %+8.2f%% %11.3e %11.3e %7.2f%% %12zu %9.1f\n",
                q.codec.label().c_str(), q.ppl, 100.0 * (q.ppl / r.baseline.ppl - 1.0), q.kld_mean,
                q.kld_p99, 100.0 * q.top1_agreement, q.kv_bytes, q.seconds);
  }
}

const CommandRegistration registration("perplexity", [](CLI::App& app) {
  auto args = std::make_shared<PerplexityArgs>();
  CLI::App* cmd = app.add_subcommand("perplexity",
                                     "perplexity and KL divergence vs an fp16 cache, per KV codec");
  add_model_flags(cmd, args->model, kDefaultPolarPair);
  cmd->add_option("--text,-f", args->text, "text file to score")->required();
  cmd->add_option("--ctx,-c", args->ctx,
                  "tokens per chunk (the second half of each chunk is scored)")
      ->capture_default_str();
  cmd->add_option("--chunks", args->chunks, "chunks to evaluate (0: the whole text)")
      ->capture_default_str();
  cmd->add_option("--codecs", args->codecs,
                  "comma-separated codecs, each NAME (K and V) or KEY/VALUE (overrides -ctk/-ctv)");
  cmd->add_flag("--reference-attention", args->reference_attention,
                "decode-then-attend instead of fused kernels");
  cmd->callback([args, cmd] { run(*args, cmd); });
});

}  // namespace
}  // namespace polarquant::cli
