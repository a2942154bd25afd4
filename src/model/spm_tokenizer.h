// The GGUF "llama" tokenizer model (tokenizer.ggml.model = "llama": a SentencePiece BPE vocabulary
// with one score per piece and byte fallback), as llama.cpp's llm_tokenizer_spm runs it and as
// Gemma 3's GGUF needs it: user-defined pieces (runs of newlines or spaces, stored with plain
// spaces) and, with parse_special, control pieces (<start_of_turn>, ...) are split out of the
// text first; each remaining fragment has its spaces escaped to U+2581, is split into UTF-8
// characters and merged by repeatedly joining the adjacent pair whose joined piece scores highest
// (ties: leftmost); characters no piece covers become <0xXX> byte pieces.
#pragma once

#include "model/tokenizer.h"

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace polarquant::model {

class GgufFile;

struct SpmVocabulary {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> token_types;  // 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
                                     // 6 byte
  int bos = -1;
  int eos = -1;
  int eot = -1;  // end of turn (<end_of_turn>), -1 if none
  int unk = -1;
  bool add_bos = true;
  bool add_space_prefix = true;  // sentencepiece's add_dummy_prefix (Gemma: false)
  bool gemma_chat = false;       // the file's chat template is Gemma's <start_of_turn> format
};

class SpmTokenizer final : public Tokenizer {
 public:
  // Throws InvalidArgument for inconsistent vocabularies (sizes, ids, missing byte pieces).
  explicit SpmTokenizer(SpmVocabulary vocab);
  // Throws Format naming the key, Unsupported when tokenizer.ggml.model is not "llama".
  static std::unique_ptr<SpmTokenizer> from_gguf(const GgufFile& file);

  std::vector<int> encode(std::string_view text, bool add_bos, bool parse_special) const override;
  std::string decode(int token, int prev) const override;
  int vocab_size() const override { return static_cast<int>(vocab_.tokens.size()); }
  int bos() const override { return vocab_.bos; }
  int eos() const override { return vocab_.eos; }
  bool is_end_of_generation(int token) const override {
    return token == vocab_.eos || (vocab_.eot >= 0 && token == vocab_.eot);
  }
  bool wants_bos() const override { return vocab_.add_bos; }
  bool has_chat_template() const override { return vocab_.gemma_chat; }
  std::string chat_prompt(std::string_view user_message) const override;

 private:
  void encode_fragment(std::string_view text, bool at_start, std::vector<int>& out) const;
  void emit_symbol(std::string_view piece, std::vector<int>& out) const;

  SpmVocabulary vocab_;
  std::unordered_map<std::string, int> ids_;
  // Pieces split out before the merges, bucketed by first byte, longest first; control pieces
  // only with parse_special.
  std::vector<std::pair<std::string, int>> specials_[256];
  int byte_ids_[256];
};

// Gemma's chat format: "<start_of_turn>user\n{message}<end_of_turn>\n<start_of_turn>model\n".
std::string gemma_chat_prompt(std::string_view user_message);

}  // namespace polarquant::model
