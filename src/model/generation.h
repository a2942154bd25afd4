// Prompt prefill plus token-by-token decoding with streaming, on one sequence of a Runtime.
#pragma once

#include "model/runtime.h"
#include "model/sampler.h"
#include "model/tokenizer.h"

#include <functional>
#include <string>
#include <vector>

namespace polarquant::model {

struct GenerationOptions {
  int max_new_tokens = 128;
  SamplerOptions sampler;
  bool stop_at_end = true;   // stop at EOS / end-of-turn
  bool keep_logits = false;  // keep the logits each generated token was chosen from
};

struct GenerationResult {
  std::vector<int> prompt;
  std::vector<int> generated;  // without the final end token
  bool stopped_at_end = false;
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;  // all decode steps (sampling included)
  std::vector<float> logits;    // generated.size() x vocab when keep_logits
};

// Called for every generated token with its decoded text, as soon as it is chosen.
using TokenCallback = std::function<void(int token, const std::string& text)>;

GenerationResult generate(Runtime& transformer, SequenceId seq, const Tokenizer& tokenizer,
                          const std::vector<int>& prompt, const GenerationOptions& options,
                          const TokenCallback& on_token = {});
// The decoding part of generate(): seq already holds the prompt (e.g. restored from a prompt cache
// file) and `logits` are the model's logits after its last token. prefill_seconds stays 0.
GenerationResult generate_from(Runtime& transformer, SequenceId seq, const Tokenizer& tokenizer,
                               const std::vector<int>& prompt, std::vector<float> logits,
                               const GenerationOptions& options,
                               const TokenCallback& on_token = {});

// Where scripts/fetch_model.sh puts the default model: $POLARQUANT_MODEL_DIR or
// ~/.cache/polarquant/models, file SmolLM2-135M-Instruct.Q4_1.gguf.
std::string default_model_path();

}  // namespace polarquant::model
