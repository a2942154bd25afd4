// GPT-2 style byte-level BPE: bytes are mapped to printable unicode characters, text is split into
// words by the pre-tokenizer, and each word is merged by merge rank.
#pragma once

#include "model/tokenizer.h"

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace polarquant::model {

class GgufFile;

struct BpeVocabulary {
  std::vector<std::string> tokens;   // byte-level strings, as in tokenizer.ggml.tokens
  std::vector<int32_t> token_types;  // 1 normal, 3 control, 4 user-defined, ... (may be empty)
  std::vector<std::string> merges;   // "left right", highest priority first
  int bos = -1;
  int eos = -1;
  int eot = -1;  // end-of-turn (e.g. <|im_end|>), -1 if none
  int unk = -1;  // stands for a byte the vocabulary lacks; -1: such bytes are an error
  bool add_bos = false;
  bool digits_split = true;  // pre-split every digit (SmolLM2's "smollm" pre-tokenizer)
};

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(BpeVocabulary vocab);
  static std::unique_ptr<BpeTokenizer> from_gguf(const GgufFile& file);

  std::vector<int> encode(std::string_view text, bool add_bos, bool parse_special) const override;
  std::string decode(int token, int prev) const override;
  int vocab_size() const override { return static_cast<int>(vocab_.tokens.size()); }
  int bos() const override { return vocab_.bos; }
  int eos() const override { return vocab_.eos; }
  bool is_end_of_generation(int token) const override {
    return token == vocab_.eos || (vocab_.eot >= 0 && token == vocab_.eot);
  }
  bool wants_bos() const override { return vocab_.add_bos; }
  bool has_chat_template() const override { return chatml_; }

 private:
  void encode_plain(std::string_view text, std::vector<int>& out) const;
  void encode_word(std::string_view word, std::vector<int>& out) const;

  BpeVocabulary vocab_;
  std::unordered_map<std::string, int> token_ids_;
  std::unordered_map<std::string, int> merge_ranks_;
  std::vector<std::pair<std::string, int>> specials_;  // control tokens, longest first
  std::string byte_to_unicode_[256];
  std::unordered_map<uint32_t, uint8_t> unicode_to_byte_;
  bool chatml_ = false;
};

// The pre-tokenizer, exposed for tests: splits text into words the way the GPT-2 regex
// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ does, after splitting
// off each digit when digits_split. Unicode classes are approximated (see the .cpp).
std::vector<std::string> bpe_pretokenize(std::string_view text, bool digits_split);

}  // namespace polarquant::model
