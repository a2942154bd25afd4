// Needle in a haystack: a fact sentence is inserted at several depths of a long text, at several
// context lengths; the model is asked for it (greedy decoding) and a cell counts as recalled when
// the answer appears in the output. Run per K/V codec to see whether quantizing the cache loses
// facts.
#pragma once

#include "eval/perplexity.h"
#include "model/llama_model.h"
#include "model/tokenizer.h"
#include "model/transformer.h"

#include <functional>
#include <string>
#include <vector>

namespace polarquant::eval {

struct NiahConfig {
  std::vector<int> contexts = {1024, 2048, 4096};
  std::vector<double> depths = {0.0, 0.25, 0.5, 0.75,
                                1.0};  // fraction of the haystack before the needle
  std::vector<CodecChoice> codecs = {{"f16", "f16"}, {"polar-544444", "polar-422222"}};  // polar4kv
  std::string needle = "The special magic number is 7314.";
  std::string question = "What is the special magic number mentioned in the text above?";
  std::string answer_prefix = "The special magic number is";  // the answer is forced to start here
  std::string answer = "7314";
  int max_new_tokens = 8;
  model::RuntimeOptions runtime;
  // Called after each cell with cells done and the total.
  std::function<void(size_t done, size_t total)> progress;
};

struct NiahCell {
  int ctx = 0;
  double depth = 0.0;
  CodecChoice codec;
  bool recalled = false;
  std::string output;  // what the model generated after the answer prefix
  // How far the cell is from flipping, in logits: along the answer's tokens (the answer after a
  // space, as the tokenizer encodes it), the smallest margin of the answer's token over the best
  // other token while greedy decoding follows the answer; where it leaves the answer, the answer
  // token's logit minus the chosen one's (negative) ends the walk. A continuous companion of
  // `recalled` that tells near misses from clear ones (answer_margin).
  double margin = 0.0;
};

struct NiahReport {
  std::vector<NiahCell> cells;
  // Recall per codec (fraction of cells), in config.codecs order.
  std::vector<double> recall;
  // Mean NiahCell::margin per codec, in the same order: a continuous summary that moves before
  // recall does.
  std::vector<double> mean_margin;
};

// Builds the prompt tokens of one cell: the haystack's first tokens with the needle inserted at
// the depth, then the question and the answer prefix (in the chat format when the tokenizer has
// one), exactly ctx - max_new_tokens tokens long. Throws InvalidArgument when the haystack is too
// short.
std::vector<int> build_niah_prompt(const model::Tokenizer& tokenizer,
                                   const std::vector<int>& haystack, const NiahConfig& config,
                                   int ctx, double depth);

// The margin of NiahCell::margin from greedy-decoded tokens and the logits each was chosen from
// (generated.size() x vocab, GenerationOptions::keep_logits). Throws InvalidArgument when the
// answer has no tokens or the logits do not match the tokens.
double answer_margin(const std::vector<int>& answer_tokens, const std::vector<int>& generated,
                     const std::vector<float>& logits, size_t vocab);

NiahReport run_niah(const model::LlamaModel& model, const model::Tokenizer& tokenizer,
                    const std::vector<int>& haystack, const NiahConfig& config);

}  // namespace polarquant::eval
