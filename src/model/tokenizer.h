// Tokenizers read from the model files: GPT-2 style byte-level BPE from GGUF metadata (SmolLM2 and
// other HF-converted models), the GGUF sentencepiece ("llama") model (Gemma 3, spm_tokenizer.h)
// and the llama2.c sentencepiece-style vocabulary (tok512.bin), plus the chat formats (ChatML of
// the SmolLM2 instruct models, Gemma's turns).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace polarquant::model {

class LlamaModel;

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Text to token ids. add_bos prepends the BOS token; parse_special turns the literal text of
  // control tokens (e.g. "<|im_start|>") into those tokens instead of encoding it as plain text.
  virtual std::vector<int> encode(std::string_view text, bool add_bos,
                                  bool parse_special) const = 0;
  // The bytes one token stands for; prev is the token before it (sentencepiece drops the leading
  // space of the first piece after BOS). Control tokens decode to "".
  virtual std::string decode(int token, int prev) const = 0;
  virtual int vocab_size() const = 0;
  virtual int bos() const = 0;
  virtual int eos() const = 0;
  // True for tokens that end a generation (EOS and, for chat models, the end-of-turn token).
  virtual bool is_end_of_generation(int token) const { return token == eos(); }
  // True when the model expects BOS at the start of a prompt.
  virtual bool wants_bos() const = 0;
  // Whether the model has a chat format (ChatML <|im_start|>role\n...<|im_end|>, or Gemma's).
  virtual bool has_chat_template() const { return false; }
  // A user message in the model's chat format with the generation prompt (default: ChatML).
  virtual std::string chat_prompt(std::string_view user_message) const;
};

// The tokenizer of a model: from GGUF metadata, or for a llama2.c checkpoint from tokenizer_path
// (required then). Throws Format/Io naming the file and field.
std::unique_ptr<Tokenizer> load_tokenizer(const LlamaModel& model,
                                          const std::string& tokenizer_path);

// Wraps a user message in the ChatML format with the default system message of SmolLM2-Instruct
// and the assistant generation prompt.
std::string chatml_prompt(std::string_view user_message);

}  // namespace polarquant::model
