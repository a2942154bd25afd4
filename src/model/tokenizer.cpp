#include "model/tokenizer.h"

#include "model/bpe_tokenizer.h"
#include "model/gguf.h"
#include "model/llama_model.h"
#include "model/sentencepiece_tokenizer.h"
#include "model/spm_tokenizer.h"

#include <polarquant/error.h>

namespace polarquant::model {

std::unique_ptr<Tokenizer> load_tokenizer(const LlamaModel& model,
                                          const std::string& tokenizer_path) {
  if (model.gguf() != nullptr && tokenizer_path.empty()) {
    const GgufFile& f = *model.gguf();
    if (f.has("tokenizer.ggml.model") && f.get_string("tokenizer.ggml.model") == "llama")
      return SpmTokenizer::from_gguf(f);
    return BpeTokenizer::from_gguf(f);
  }
  if (tokenizer_path.empty()) {
    throw_invalid(
        "a llama2.c checkpoint has no vocabulary inside: pass its tokenizer file (--tokenizer)");
  }
  return SentencePieceTokenizer::load(tokenizer_path, model.config().vocab_size);
}

std::string Tokenizer::chat_prompt(std::string_view user_message) const {
  return chatml_prompt(user_message);
}

std::string chatml_prompt(std::string_view user_message) {
  std::string p =
      "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
      "Face<|im_end|>\n"
      "<|im_start|>user\n";
  p.append(user_message);
  p += "<|im_end|>\n<|im_start|>assistant\n";
  return p;
}

}  // namespace polarquant::model
