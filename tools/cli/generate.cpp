// `polarquant generate`: text generation with any K/V codec, streamed to stdout, ending with what
// the cache saved (bytes vs fp16) and how the output compares with an fp16-cache run.
#include <polarquant/error.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "command.h"
#include "model/generation.h"
#include "model/prompt_cache.h"
#include "model/sampler.h"
#include "model/transformer.h"
#include "model_options.h"

namespace polarquant::cli {
namespace {

constexpr int kGenerateRecentTokens = 32;

constexpr const char* kDefaultChatPrompt =
    "Write a short story about a lighthouse keeper who finds a message in a bottle.";

struct GenerateArgs {
  ModelFlags model;
  std::string prompt;
  bool prompt_given = false;
  int n = 128;
  float temperature = 0.0f;
  float top_p = 0.95f;
  uint64_t seed = 42;
  bool raw = false;
  bool compare = true;
  bool fp16_generated = false;
  std::string logits_out;
  std::string prompt_cache;  // --prompt-cache FILE
  bool prompt_cache_ro = false;
};

// Writes the prompt's token ids (PREFIX.json) and the logits of every prompt position from an
// exact (f32) cache (PREFIX.f32, float32 little-endian, tokens x vocab): what
// scripts/compare_reference.py compares with an independent implementation.
void write_prompt_logits(const model::LlamaModel& m, const std::vector<int>& prompt,
                         const model::RuntimeOptions& base, const std::string& prefix) {
  model::RuntimeOptions rt = base;
  rt.key_codec = rt.value_codec = "f32";
  model::Transformer tf(m, rt);
  std::vector<float> logits;
  tf.forward(tf.add_sequence(), prompt.data(), prompt.size(), logits, true);
  std::FILE* f = std::fopen((prefix + ".f32").c_str(), "wb");
  if (f == nullptr ||
      std::fwrite(logits.data(), sizeof(float), logits.size(), f) != logits.size()) {
    if (f != nullptr) std::fclose(f);
    throw_io("cannot write '" + prefix + ".f32'");
  }
  std::fclose(f);
  const nlohmann::json j = {
      {"tokens", prompt}, {"vocab", m.config().vocab_size}, {"logits", prefix + ".f32"}};
  f = std::fopen((prefix + ".json").c_str(), "wb");
  const std::string text = j.dump();
  if (f == nullptr || std::fwrite(text.data(), 1, text.size(), f) != text.size()) {
    if (f != nullptr) std::fclose(f);
    throw_io("cannot write '" + prefix + ".json'");
  }
  std::fclose(f);
}

struct Comparison {
  size_t match_prefix = 0;  // generated tokens identical to the fp16-cache run's
  size_t f16_generated = 0;
  double kld_mean =
      0.0;  // KL(fp16 || codec) of the next-token distributions, on the codec's tokens
  double top1_agreement = 0.0;
};

// Runs the fp16-cache model twice: freely (same sampler) to find where its tokens first differ, and
// teacher-forced on the codec run's tokens to compare each next-token distribution.
Comparison compare_with_f16(const model::LlamaModel& m, const model::Tokenizer& tok,
                            const model::RuntimeOptions& base, const model::GenerationOptions& gen,
                            const model::GenerationResult& run) {
  Comparison c;
  model::RuntimeOptions f16 = base;
  f16.key_codec = f16.value_codec = "f16";
  {
    const std::unique_ptr<model::Runtime> tf = model::make_runtime(m, f16);
    const auto ref = model::generate(*tf, tf->add_sequence(), tok, run.prompt, gen);
    c.f16_generated = ref.generated.size();
    while (c.match_prefix < run.generated.size() && c.match_prefix < ref.generated.size() &&
           run.generated[c.match_prefix] == ref.generated[c.match_prefix]) {
      ++c.match_prefix;
    }
  }
  if (run.generated.empty()) return c;
  const std::unique_ptr<model::Runtime> tf = model::make_runtime(m, f16);
  const SequenceId seq = tf->add_sequence();
  std::vector<int> tokens = run.prompt;
  tokens.insert(tokens.end(), run.generated.begin(), run.generated.end() - 1);
  std::vector<float> logits;
  tf->forward(seq, tokens.data(), tokens.size(), logits, true);
  const size_t vocab = static_cast<size_t>(m.config().vocab_size);
  std::vector<double> lp(vocab), lq(vocab);
  size_t agree = 0;
  for (size_t i = 0; i < run.generated.size(); ++i) {
    const float* ref = logits.data() + (run.prompt.size() - 1 + i) * vocab;
    const float* got = run.logits.data() + i * vocab;
    model::log_softmax(ref, vocab, lp.data());
    model::log_softmax(got, vocab, lq.data());
    double kl = 0.0;
    for (size_t j = 0; j < vocab; ++j) kl += std::exp(lp[j]) * (lp[j] - lq[j]);
    c.kld_mean += kl;
    agree += model::argmax(ref, vocab) == model::argmax(got, vocab);
  }
  c.kld_mean /= static_cast<double>(run.generated.size());
  c.top1_agreement = static_cast<double>(agree) / static_cast<double>(run.generated.size());
  return c;
}

void run(GenerateArgs& a, CLI::App* cmd) {
  finish_codec_flags(a.model);
  if (a.prompt_cache_ro && a.prompt_cache.empty()) {
    throw_invalid("--prompt-cache-ro needs --prompt-cache FILE");
  }
  if (!a.prompt_cache.empty() && a.model.device != "cpu") {
    throw_invalid("--prompt-cache works with the CPU runtime only; with --device " +
                  a.model.device + " the cache lives on the device (leave out --prompt-cache)");
  }
  if (!a.prompt_cache.empty() && a.model.codebooks == "online") {
    throw_invalid(
        "--prompt-cache does not store online codebooks (--codebooks online fits them per "
        "sequence and layer); leave out one of the two");
  }
  LoadedModel lm = load_model(a.model);
  check_codecs(a.model, {}, lm.model->config().head_dim);
  const model::Tokenizer& tok = *lm.tokenizer;
  std::string text = a.prompt;
  const bool chat = lm.tokenizer->has_chat_template() && !a.raw;
  if (!a.prompt_given && chat) text = kDefaultChatPrompt;
  if (chat) text = tok.chat_prompt(text);
  std::vector<int> prompt = tok.encode(text, tok.wants_bos(), chat);
  if (prompt.empty()) prompt.push_back(tok.bos());  // llama2.c: generation starts from BOS
  const size_t context = static_cast<size_t>(lm.model->config().context_length);
  if (prompt.size() > context) {
    throw_invalid("the prompt is " + std::to_string(prompt.size()) +
                  " tokens, more than the model's context of " + std::to_string(context) +
                  " tokens");
  }

  model::RuntimeOptions rt = runtime_options(a.model);
  // The GPU cache is sized up front: the prompt plus what may be generated.
  rt.max_context = std::min(prompt.size() + static_cast<size_t>(std::max(a.n, 0)) + 1,
                            static_cast<size_t>(lm.model->config().context_length));
  rt.quantize_generated = !a.fp16_generated;
  model::GenerationOptions gen;
  gen.max_new_tokens = a.n;
  gen.sampler = {a.temperature, a.top_p, a.seed};
  gen.keep_logits = a.compare;

  if (!a.logits_out.empty()) write_prompt_logits(*lm.model, prompt, rt, a.logits_out);
  const std::unique_ptr<model::Runtime> tf = model::make_runtime(*lm.model, rt);
  if (!a.model.json) {
    std::fputs(
        chat ? (a.prompt_given ? a.prompt : std::string(kDefaultChatPrompt)).c_str() : text.c_str(),
        stdout);
    std::fputs(chat ? "\n\n" : "", stdout);
    std::fflush(stdout);
  }
  std::string out;
  const model::TokenCallback stream = [&](int, const std::string& piece) {
    out += piece;
    if (!a.model.json) {
      std::fputs(piece.c_str(), stdout);
      std::fflush(stdout);
    }
  };
  model::GenerationResult result;
  model::PromptPrefill cached;
  if (a.prompt_cache.empty()) {
    result = model::generate(*tf, tf->add_sequence(), tok, prompt, gen, stream);
  } else {
    // make_runtime("cpu") is the CPU Transformer; the device was checked above.
    auto& cpu = dynamic_cast<model::Transformer&>(*tf);
    const auto t0 = std::chrono::steady_clock::now();
    cached = model::prefill_with_prompt_cache(cpu, model::cache_owner(*lm.model, tok), prompt,
                                              a.prompt_cache, a.prompt_cache_ro);
    const std::chrono::duration<double> prefill = std::chrono::steady_clock::now() - t0;
    std::fprintf(stderr, "-- prompt cache: %s\n", cached.note.c_str());
    result = model::generate_from(*tf, cached.seq, tok, prompt, cached.logits, gen, stream);
    result.prefill_seconds = prefill.count();
  }
  const KvMemoryStats mem = tf->memory();
  const bool same_as_f16 = rt.key_codec == "f16" && rt.value_codec == "f16";
  Comparison cmp;
  const bool compared = a.compare && !same_as_f16;
  if (compared) cmp = compare_with_f16(*lm.model, tok, rt, gen, result);
  const double prefill_tps = result.prompt.size() / std::max(result.prefill_seconds, 1e-9);
  const double decode_tps = result.generated.size() / std::max(result.decode_seconds, 1e-9);
  const double ratio =
      mem.total_bytes > 0 ? static_cast<double>(mem.fp16_bytes) / mem.total_bytes : 0.0;
  if (a.model.json) {
    nlohmann::json j = {{"model", a.model.model},
                        {"device", tf->device_name()},
                        {"key_codec", rt.key_codec},
                        {"value_codec", rt.value_codec},
                        {"sink_tokens", rt.sink_tokens},
                        {"recent_tokens", rt.recent_tokens},
                        {"quantize_generated", rt.quantize_generated},
                        {"prompt_tokens", result.prompt.size()},
                        {"generated_tokens", result.generated.size()},
                        {"stopped_at_end", result.stopped_at_end},
                        {"text", out},
                        {"kv_bytes", mem.total_bytes},
                        {"kv_fp16_bytes", mem.fp16_bytes},
                        {"compression_vs_fp16", ratio},
                        {"prefill_tokens_per_s", prefill_tps},
                        {"decode_tokens_per_s", decode_tps}};
    if (!a.prompt_cache.empty()) {
      j["prompt_cache"] = {
          {"file", a.prompt_cache}, {"reused_tokens", cached.reused}, {"saved", cached.saved}};
    }
    if (compared) {
      j["f16_match_prefix"] = cmp.match_prefix;
      j["f16_generated_tokens"] = cmp.f16_generated;
      j["kld_mean"] = cmp.kld_mean;
      j["top1_agreement"] = cmp.top1_agreement;
    }
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf(
      "\n\n-- %zu prompt tokens, %zu generated%s; prefill %.1f tok/s, decode %.1f tok/s on %s\n",
      result.prompt.size(), result.generated.size(),
      result.stopped_at_end ? " (stopped at end token)" : "", prefill_tps, decode_tps,
      tf->device_name().c_str());
  std::printf("-- KV cache (K %s, V %s): %zu bytes vs %zu bytes fp16 (%.2fx %s)\n",
              rt.key_codec.c_str(), rt.value_codec.c_str(), mem.total_bytes, mem.fp16_bytes,
              ratio >= 1.0 ? ratio : 1.0 / ratio, ratio >= 1.0 ? "smaller" : "larger");
  if (rt.sink_tokens + rt.recent_tokens > 0) {
    std::printf(
        "   (the first %d and the %d most recent tokens stay in full precision: on a short "
        "text they are most of the cache; the saving grows with the context)\n",
        rt.sink_tokens, rt.recent_tokens);
  }
  if (compared) {
    std::printf(
        "-- vs an fp16-cache run: first %zu of %zu generated tokens identical%s; on these tokens "
        "mean KL "
        "%.3e, top-1 agreement %.1f%%\n",
        cmp.match_prefix, result.generated.size(),
        cmp.match_prefix == result.generated.size() && cmp.f16_generated == result.generated.size()
            ? " (all)"
            : "",
        cmp.kld_mean, 100.0 * cmp.top1_agreement);
  }
}

const CommandRegistration registration("generate", [](CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "generate text with a quantized KV cache");
  // Generation keeps its 32 most recent tokens in full precision by default: they are the tokens
  // just generated, which a small model attends to most, and the window costs a constant 1.5 MB on
  // SmolLM2 whatever the context (docs/RESULTS.md section 6: without it the README's prompt falls
  // into a loop; with it the first 45 tokens equal the fp16-cache run's).
  add_model_flags(cmd, args->model, kDefaultPolarPair, kGenerateRecentTokens);
  cmd->add_option("-p,--prompt", args->prompt,
                  "prompt (chat models: the user message; default: a short story request)")
      ->each([args](const std::string&) { args->prompt_given = true; });
  cmd->add_option("-n,--n-predict", args->n, "tokens to generate")->capture_default_str();
  cmd->add_option("--temperature,--temp", args->temperature, "0: greedy")->capture_default_str();
  cmd->add_option("--top-p", args->top_p, "nucleus sampling threshold")->capture_default_str();
  cmd->add_option("--seed,-s", args->seed, "sampling seed")->capture_default_str();
  cmd->add_flag("--raw", args->raw, "do not wrap the prompt in the model's chat format");
  cmd->add_flag("!--no-compare", args->compare, "skip the comparison with an fp16-cache run");
  cmd->add_flag("--fp16-generated", args->fp16_generated,
                "keep generated tokens in fp16, quantize only the prompt (the paper's setting)");
  cmd->add_option(
      "--logits-out", args->logits_out,
      "also write the prompt's tokens (PREFIX.json) and exact-cache logits (PREFIX.f32)");
  cmd->add_option("--prompt-cache", args->prompt_cache,
                  "restore the prompt's KV cache from FILE when it holds (a prefix of) this "
                  "prompt for this model and cache settings, else compute it and save it there "
                  "(CPU runtime)");
  cmd->add_flag("--prompt-cache-ro", args->prompt_cache_ro,
                "use --prompt-cache FILE but never write it");
  cmd->callback([args, cmd] { run(*args, cmd); });
});

}  // namespace
}  // namespace polarquant::cli
