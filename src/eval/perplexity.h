// Perplexity and the distance of each codec's next-token distributions from an fp16-cache run, on
// any token stream (llama.cpp's perplexity/KL-divergence protocol): the text is cut into chunks of
// ctx tokens, each chunk is evaluated from an empty cache, and the second half of each chunk is
// scored, so every scored token sees at least ctx/2 tokens of context.
#pragma once

#include "model/llama_model.h"
#include "model/transformer.h"

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

namespace polarquant::eval {

struct CodecChoice {
  std::string key_codec;
  std::string value_codec;
  std::string label() const {
    return key_codec == value_codec ? key_codec : key_codec + "/" + value_codec;
  }
};

struct PerplexityConfig {
  int ctx = 2048;
  int max_chunks = 1;               // 0: as many as the tokens allow
  std::vector<CodecChoice> codecs;  // evaluated against the baseline
  CodecChoice baseline = {"f16", "f16"};
  model::RuntimeOptions runtime;  // threads, fused attention, seed (codecs are set per run)
  // Called after each forward step with tokens processed so far and the total.
  std::function<void(size_t done, size_t total)> progress;
};

struct CodecQuality {
  CodecChoice codec;
  double ppl = 0.0;
  double kld_mean = 0.0;        // mean over scored tokens of KL(baseline || codec), nats
  double kld_p99 = 0.0;         // 99th percentile of the same
  double top1_agreement = 0.0;  // fraction of scored tokens where both argmaxes agree
  size_t kv_bytes = 0;          // cache bytes after one chunk (ctx tokens)
  size_t kv_fp16_bytes = 0;     // what fp16 would need for the same tokens
  double seconds = 0.0;
};

struct PerplexityReport {
  int ctx = 0;
  size_t chunks = 0;
  size_t scored_tokens = 0;
  CodecQuality baseline;  // its kld is 0 by definition
  std::vector<CodecQuality> codecs;
};

// Throws InvalidArgument when tokens cannot fill one chunk of ctx tokens, or ctx exceeds the
// model's context.
PerplexityReport evaluate_perplexity(const model::LlamaModel& model, const std::vector<int>& tokens,
                                     const PerplexityConfig& config);

// The p-quantile (0..1) of values by linear interpolation between order statistics.
double quantile(std::vector<double> values, double p);

}  // namespace polarquant::eval
