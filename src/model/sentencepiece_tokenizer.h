// The llama2.c tokenizer format (tokenizer.bin / tok512.bin): a sentencepiece BPE vocabulary with
// one score per piece. Encoding follows llama2.c: a leading space prefix, one piece per UTF-8 code
// point (byte-fallback pieces <0xXX> otherwise), then greedy merging of the adjacent pair whose
// merged piece has the highest score.
#pragma once

#include "model/tokenizer.h"

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace polarquant::model {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(std::vector<std::string> pieces, std::vector<float> scores, int bos = 1,
                         int eos = 2);
  // Reads a llama2.c tokenizer file holding vocab_size pieces. Throws Format naming the byte offset
  // of a truncated or implausible entry, Io when the file cannot be read.
  static std::unique_ptr<SentencePieceTokenizer> load(const std::string& path, int vocab_size);
  static std::unique_ptr<SentencePieceTokenizer> parse(const uint8_t* data, size_t size,
                                                       int vocab_size, const std::string& label);

  std::vector<int> encode(std::string_view text, bool add_bos, bool parse_special) const override;
  std::string decode(int token, int prev) const override;
  int vocab_size() const override { return static_cast<int>(pieces_.size()); }
  int bos() const override { return bos_; }
  int eos() const override { return eos_; }
  bool wants_bos() const override { return true; }

 private:
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int> ids_;
  int bos_;
  int eos_;
};

}  // namespace polarquant::model
