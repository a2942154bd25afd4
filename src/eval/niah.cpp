#include "eval/niah.h"

#include "model/generation.h"

#include <polarquant/error.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

namespace polarquant::eval {

std::vector<int> build_niah_prompt(const model::Tokenizer& tok, const std::vector<int>& haystack,
                                   const NiahConfig& config, int ctx, double depth) {
  if (!(depth >= 0.0 && depth <= 1.0))
    throw_invalid("needle depth " + std::to_string(depth) + " is outside [0, 1]");
  const bool chat = tok.has_chat_template();
  std::vector<int> head, tail;
  if (chat) {
    head = tok.encode(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n"
        "<|im_start|>user\n",
        false, true);
    tail = tok.encode(
        "\n\n" + config.question + "<|im_end|>\n<|im_start|>assistant\n" + config.answer_prefix,
        false, true);
  } else {
    if (tok.wants_bos()) head.push_back(tok.bos());
    tail = tok.encode("\n\n" + config.question + "\n" + config.answer_prefix, false, false);
  }
  // The needle is its own sentence: it starts after a space and ends before one.
  const std::vector<int> needle = tok.encode(" " + config.needle + " ", false, false);
  const long budget = static_cast<long>(ctx) - config.max_new_tokens -
                      static_cast<long>(head.size() + tail.size() + needle.size());
  if (budget <= 0) {
    throw_invalid("context " + std::to_string(ctx) +
                  " leaves no room for a haystack: the needle, " + "question and " +
                  std::to_string(config.max_new_tokens) + " answer tokens take " +
                  std::to_string(ctx - budget) + " tokens");
  }
  if (static_cast<size_t>(budget) > haystack.size()) {
    throw_invalid("context " + std::to_string(ctx) + " needs " +
                  std::to_string(std::max(budget, 1L)) + " haystack tokens; the text gives " +
                  std::to_string(haystack.size()));
  }
  const size_t at = static_cast<size_t>(std::lround(depth * static_cast<double>(budget)));
  std::vector<int> prompt = head;
  prompt.insert(prompt.end(), haystack.begin(), haystack.begin() + static_cast<long>(at));
  prompt.insert(prompt.end(), needle.begin(), needle.end());
  prompt.insert(prompt.end(), haystack.begin() + static_cast<long>(at), haystack.begin() + budget);
  prompt.insert(prompt.end(), tail.begin(), tail.end());
  return prompt;
}

double answer_margin(const std::vector<int>& answer_tokens, const std::vector<int>& generated,
                     const std::vector<float>& logits, size_t vocab) {
  if (answer_tokens.empty()) throw_invalid("niah: the answer encodes to no tokens");
  if (vocab == 0 || logits.size() != generated.size() * vocab) {
    throw_invalid("niah: " + std::to_string(logits.size()) + " logits for " +
                  std::to_string(generated.size()) + " generated tokens of a vocabulary of " +
                  std::to_string(vocab));
  }
  double margin = std::numeric_limits<double>::infinity();
  const size_t n = std::min(answer_tokens.size(), generated.size());
  for (size_t i = 0; i < n; ++i) {
    const float* row = logits.data() + i * vocab;
    const int want = answer_tokens[i];
    if (want < 0 || static_cast<size_t>(want) >= vocab)
      throw_invalid("niah: answer token " + std::to_string(want) + " is outside the vocabulary");
    if (generated[i] != want) {
      return std::min(margin, static_cast<double>(row[want]) - row[generated[i]]);
    }
    float best_other = -std::numeric_limits<float>::infinity();
    for (size_t j = 0; j < vocab; ++j) {
      if (j != static_cast<size_t>(want)) best_other = std::max(best_other, row[j]);
    }
    margin = std::min(margin, static_cast<double>(row[want]) - best_other);
  }
  return n == 0 ? 0.0 : margin;
}

NiahReport run_niah(const model::LlamaModel& m, const model::Tokenizer& tok,
                    const std::vector<int>& haystack, const NiahConfig& config) {
  if (config.max_new_tokens <= 0) throw_invalid("niah max_new_tokens must be positive");
  NiahReport report;
  report.recall.assign(config.codecs.size(), 0.0);
  report.mean_margin.assign(config.codecs.size(), 0.0);
  const size_t total = config.contexts.size() * config.depths.size() * config.codecs.size();
  size_t done = 0;
  // Every context is checked before the first cell runs.
  for (int ctx : config.contexts) {
    if (ctx > m.config().context_length) {
      throw_invalid("niah context " + std::to_string(ctx) + " exceeds the model's " +
                    std::to_string(m.config().context_length));
    }
  }
  const std::vector<int> answer_tokens = tok.encode(" " + config.answer, false, false);
  for (int ctx : config.contexts) {
    std::vector<std::vector<int>> prompts;
    for (double depth : config.depths) {
      prompts.push_back(build_niah_prompt(tok, haystack, config, ctx, depth));
    }
    // One runtime per codec and context, built when its cells run and freed before the next codec's
    // (on a GPU each holds the weights and its scratch); one sequence per cell.
    for (size_t k = 0; k < config.codecs.size(); ++k) {
      model::RuntimeOptions rt = config.runtime;
      rt.key_codec = config.codecs[k].key_codec;
      rt.value_codec = config.codecs[k].value_codec;
      rt.max_sequences = 1;
      rt.max_context = std::min(static_cast<size_t>(m.config().context_length),
                                static_cast<size_t>(ctx + config.max_new_tokens + 64));
      const std::unique_ptr<model::Runtime> tf = model::make_runtime(m, rt);
      for (size_t di = 0; di < config.depths.size(); ++di) {
        model::GenerationOptions gen;
        gen.max_new_tokens = config.max_new_tokens;
        gen.keep_logits = true;
        gen.stop_at_end = false;  // the margin needs the logits an end token was chosen from
        NiahCell cell;
        cell.ctx = ctx;
        cell.depth = config.depths[di];
        cell.codec = config.codecs[k];
        const SequenceId seq = tf->add_sequence();
        bool ended = false;  // the output is the text before an end token
        const model::GenerationResult g = model::generate(
            *tf, seq, tok, prompts[di], gen, [&](int token, const std::string& piece) {
              ended = ended || tok.is_end_of_generation(token);
              if (!ended) cell.output += piece;
            });
        tf->free_sequence(seq);
        cell.margin = answer_margin(answer_tokens, g.generated, g.logits,
                                    static_cast<size_t>(m.config().vocab_size));
        cell.recalled = cell.output.find(config.answer) != std::string::npos;
        report.recall[k] += cell.recalled ? 1.0 : 0.0;
        report.mean_margin[k] += cell.margin;
        report.cells.push_back(std::move(cell));
        if (config.progress) config.progress(++done, total);
      }
    }
  }
  const double per_codec = static_cast<double>(config.contexts.size() * config.depths.size());
  for (double& r : report.recall) r /= per_codec;
  for (double& r : report.mean_margin) r /= per_codec;
  return report;
}

}  // namespace polarquant::eval
