#include "model/sentencepiece_tokenizer.h"

#include "model/mapped_file.h"

#include <polarquant/error.h>

#include <cmath>
#include <cstring>

namespace polarquant::model {

SentencePieceTokenizer::SentencePieceTokenizer(std::vector<std::string> pieces,
                                               std::vector<float> scores, int bos, int eos)
    : pieces_(std::move(pieces)), scores_(std::move(scores)), bos_(bos), eos_(eos) {
  if (pieces_.size() != scores_.size() || pieces_.empty()) {
    throw_invalid("sentencepiece vocabulary needs one score per piece and at least one piece");
  }
  if (bos_ < 0 || eos_ < 0 || bos_ >= vocab_size() || eos_ >= vocab_size()) {
    throw_invalid("sentencepiece BOS/EOS ids are outside the vocabulary of " +
                  std::to_string(vocab_size()));
  }
  for (size_t i = 0; i < pieces_.size(); ++i) ids_.emplace(pieces_[i], static_cast<int>(i));
}

std::unique_ptr<SentencePieceTokenizer> SentencePieceTokenizer::load(const std::string& path,
                                                                     int vocab_size) {
  MappedFile f(path);
  return parse(f.data(), f.size(), vocab_size, path);
}

std::unique_ptr<SentencePieceTokenizer> SentencePieceTokenizer::parse(const uint8_t* data,
                                                                      size_t size, int vocab_size,
                                                                      const std::string& label) {
  if (vocab_size <= 0) throw_invalid("tokenizer '" + label + "': vocab_size must be positive");
  size_t pos = 0;
  auto read = [&](void* dst, size_t n, const char* field, int index) {
    if (n > size - pos) {
      throw_format("tokenizer '" + label + "': truncated " + field +
                   (index >= 0 ? " of piece " + std::to_string(index) : std::string()) +
                   " at byte offset " + std::to_string(pos) + " (expected " +
                   std::to_string(vocab_size) + " pieces)");
    }
    std::memcpy(dst, data + pos, n);
    pos += n;
  };
  int32_t max_len = 0;
  read(&max_len, 4, "max_token_length", -1);
  if (max_len <= 0 || max_len > (1 << 16)) {
    throw_format("tokenizer '" + label + "': max_token_length " + std::to_string(max_len) +
                 " is outside 1..65536");
  }
  std::vector<std::string> pieces(static_cast<size_t>(vocab_size));
  std::vector<float> scores(static_cast<size_t>(vocab_size));
  for (int i = 0; i < vocab_size; ++i) {
    read(&scores[i], 4, "score", i);
    if (!std::isfinite(scores[i])) {
      throw_format("tokenizer '" + label + "': score of piece " + std::to_string(i) +
                   " at byte offset " + std::to_string(pos - 4) + " is not finite");
    }
    int32_t len = 0;
    read(&len, 4, "length", i);
    if (len < 0 || len > max_len) {
      throw_format("tokenizer '" + label + "': length " + std::to_string(len) + " of piece " +
                   std::to_string(i) + " at byte offset " + std::to_string(pos - 4) +
                   " is outside 0..max_token_length " + std::to_string(max_len));
    }
    pieces[i].resize(static_cast<size_t>(len));
    read(pieces[i].data(), static_cast<size_t>(len), "bytes", i);
  }
  if (vocab_size <= 2) throw_format("tokenizer '" + label + "': needs BOS (1) and EOS (2) pieces");
  return std::make_unique<SentencePieceTokenizer>(std::move(pieces), std::move(scores));
}

std::vector<int> SentencePieceTokenizer::encode(std::string_view text, bool add_bos,
                                                bool /*parse_special*/) const {
  std::vector<int> tokens;
  if (add_bos) tokens.push_back(bos_);
  if (text.empty()) return tokens;
  const size_t first = tokens.size();
  // sentencepiece's add_dummy_prefix: the text is encoded as if it started with a space.
  if (auto it = ids_.find(" "); it != ids_.end()) tokens.push_back(it->second);
  for (size_t i = 0; i < text.size();) {
    size_t len = 1;
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0xC0) {
      while (len < 4 && i + len < text.size() &&
             (static_cast<unsigned char>(text[i + len]) & 0xC0) == 0x80)
        ++len;
    }
    const auto it = ids_.find(std::string(text.substr(i, len)));
    if (it != ids_.end()) {
      tokens.push_back(it->second);
    } else {
      // Byte fallback: <0x00>..<0xFF> are pieces 3..258 in llama2.c vocabularies; look them up by
      // name so a vocabulary without them fails clearly instead of producing wrong ids.
      for (size_t k = 0; k < len; ++k) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", static_cast<unsigned char>(text[i + k]));
        const auto b = ids_.find(name);
        if (b == ids_.end()) throw_invalid(std::string("tokenizer has no piece for byte ") + name);
        tokens.push_back(b->second);
      }
    }
    i += len;
  }
  std::string merged;
  while (true) {
    float best_score = -1e30f;
    int best_id = -1;
    size_t best = 0;
    for (size_t i = first; i + 1 < tokens.size(); ++i) {
      merged.assign(pieces_[tokens[i]]).append(pieces_[tokens[i + 1]]);
      const auto it = ids_.find(merged);
      if (it != ids_.end() && scores_[it->second] > best_score) {
        best_score = scores_[it->second];
        best_id = it->second;
        best = i;
      }
    }
    if (best_id < 0) break;
    tokens[best] = best_id;
    tokens.erase(tokens.begin() + static_cast<long>(best) + 1);
  }
  return tokens;
}

std::string SentencePieceTokenizer::decode(int token, int prev) const {
  if (token < 0 || token >= vocab_size())
    throw_invalid("token id " + std::to_string(token) + " is outside the vocabulary");
  if (token == bos_ || token == eos_) return "";
  std::string piece = pieces_[token];
  if (prev == bos_ && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
  unsigned int byte = 0;
  if (piece.size() == 6 && std::sscanf(piece.c_str(), "<0x%02X>", &byte) == 1)
    return std::string(1, static_cast<char>(byte));
  return piece;
}

}  // namespace polarquant::model
