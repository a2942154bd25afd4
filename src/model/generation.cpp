#include "model/generation.h"

#include <polarquant/error.h>

#include <chrono>
#include <cstdlib>

namespace polarquant::model {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

GenerationResult generate(Runtime& transformer, SequenceId seq, const Tokenizer& tokenizer,
                          const std::vector<int>& prompt, const GenerationOptions& options,
                          const TokenCallback& on_token) {
  if (prompt.empty()) throw_invalid("generation needs a prompt of at least one token (e.g. BOS)");
  if (options.max_new_tokens < 0) throw_invalid("max_new_tokens must be >= 0");
  std::vector<float> logits;
  const auto t0 = std::chrono::steady_clock::now();
  transformer.forward(seq, prompt.data(), prompt.size(), logits, false);
  const double prefill = seconds_since(t0);
  GenerationResult result =
      generate_from(transformer, seq, tokenizer, prompt, std::move(logits), options, on_token);
  result.prefill_seconds = prefill;
  return result;
}

GenerationResult generate_from(Runtime& transformer, SequenceId seq, const Tokenizer& tokenizer,
                               const std::vector<int>& prompt, std::vector<float> logits,
                               const GenerationOptions& options, const TokenCallback& on_token) {
  if (prompt.empty()) throw_invalid("generation needs a prompt of at least one token (e.g. BOS)");
  if (options.max_new_tokens < 0) throw_invalid("max_new_tokens must be >= 0");
  const size_t vocab = static_cast<size_t>(transformer.config().vocab_size);
  const size_t context = static_cast<size_t>(transformer.config().context_length);
  if (logits.size() != vocab) {
    throw_invalid("generate_from: " + std::to_string(logits.size()) +
                  " logits for a vocabulary of " + std::to_string(vocab));
  }
  GenerationResult result;
  result.prompt = prompt;
  Sampler sampler(options.sampler);
  int prev = prompt.back();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < options.max_new_tokens; ++i) {
    const int token = sampler.sample(logits.data(), vocab);
    if (options.stop_at_end && tokenizer.is_end_of_generation(token)) {
      result.stopped_at_end = true;
      break;
    }
    result.generated.push_back(token);
    if (options.keep_logits)
      result.logits.insert(result.logits.end(), logits.begin(), logits.end());
    if (on_token) on_token(token, tokenizer.decode(token, prev));
    prev = token;
    if (i + 1 == options.max_new_tokens || transformer.position(seq) + 1 > context) break;
    transformer.forward(seq, &token, 1, logits, false);
  }
  result.decode_seconds = seconds_since(t0);
  return result;
}

std::string default_model_path() {
  const char* dir = std::getenv("POLARQUANT_MODEL_DIR");
  std::string base;
  if (dir != nullptr && *dir != '\0') {
    base = dir;
  } else {
    const char* home = std::getenv("HOME");
    base = std::string(home != nullptr ? home : ".") + "/.cache/polarquant/models";
  }
  return base + "/SmolLM2-135M-Instruct.Q4_1.gguf";
}

}  // namespace polarquant::model
