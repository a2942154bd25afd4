#include "model/spm_tokenizer.h"

#include "model/gguf.h"

#include <polarquant/error.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <queue>

namespace polarquant::model {

namespace {

constexpr int32_t kNormal = 1, kControl = 3, kUserDefined = 4, kByte = 6;
const std::string kSpaceMark = "\xE2\x96\x81";  // U+2581, sentencepiece's escaped space

size_t utf8_length(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) return 2;
  if ((c & 0xF0) == 0xE0) return 3;
  if ((c & 0xF8) == 0xF0) return 4;
  return 1;  // a stray continuation or invalid byte stands alone (byte fallback)
}

struct Symbol {
  int prev, next;
  size_t begin, len;  // bytes of the escaped fragment
};

struct Bigram {
  float score;
  int left;
  size_t len;                              // combined length when queued; stale entries are skipped
  bool operator<(const Bigram& o) const {  // max score first, then leftmost
    return score < o.score || (score == o.score && left > o.left);
  }
};

std::vector<int32_t> int_array(const GgufFile& f, const std::string& key) {
  const GgufValue& v = f.get(key);
  if (v.type != GgufType::kArray ||
      !(v.element_type == GgufType::kI32 || v.element_type == GgufType::kU32)) {
    throw_format("GGUF '" + f.label() + "': " + key + " is not an array of int32");
  }
  std::vector<int32_t> out;
  out.reserve(v.elements.size());
  for (const auto& e : v.elements)
    out.push_back(static_cast<int32_t>(e.type == GgufType::kI32 ? e.i : static_cast<int64_t>(e.u)));
  return out;
}

}  // namespace

SpmTokenizer::SpmTokenizer(SpmVocabulary vocab) : vocab_(std::move(vocab)) {
  const size_t n = vocab_.tokens.size();
  if (n == 0 || vocab_.scores.size() != n || vocab_.token_types.size() != n) {
    throw_invalid("sentencepiece vocabulary of " + std::to_string(n) + " pieces has " +
                  std::to_string(vocab_.scores.size()) + " scores and " +
                  std::to_string(vocab_.token_types.size()) + " token types");
  }
  for (int id : {vocab_.bos, vocab_.eos}) {
    if (id < 0 || static_cast<size_t>(id) >= n)
      throw_invalid("sentencepiece BOS/EOS id " + std::to_string(id) +
                    " is outside the vocabulary");
  }
  std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
  for (size_t i = 0; i < n; ++i) {
    const std::string& t = vocab_.tokens[i];
    const int32_t type = vocab_.token_types[i];
    ids_.emplace(t, static_cast<int>(i));
    unsigned int byte = 0;
    if (type == kByte && t.size() == 6 && std::sscanf(t.c_str(), "<0x%02X>", &byte) == 1)
      byte_ids_[byte] = static_cast<int>(i);
    if ((type == kUserDefined || type == kControl) && !t.empty())
      specials_[static_cast<unsigned char>(t[0])].emplace_back(t, static_cast<int>(i));
  }
  for (auto& bucket : specials_) {
    std::stable_sort(bucket.begin(), bucket.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  }
  for (int b = 0; b < 256; ++b) {
    if (byte_ids_[b] < 0) {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      throw_invalid(std::string("sentencepiece vocabulary has no byte piece ") + name);
    }
  }
}

std::unique_ptr<SpmTokenizer> SpmTokenizer::from_gguf(const GgufFile& f) {
  const std::string model = f.get_string("tokenizer.ggml.model");
  if (model != "llama") {
    throw Error(ErrorKind::kUnsupported, "GGUF '" + f.label() + "': tokenizer.ggml.model '" +
                                             model + "' is not the sentencepiece model 'llama'");
  }
  SpmVocabulary v;
  v.tokens = f.get_string_array("tokenizer.ggml.tokens");
  const GgufValue& scores = f.get("tokenizer.ggml.scores");
  if (scores.type != GgufType::kArray || scores.element_type != GgufType::kF32)
    throw_format("GGUF '" + f.label() + "': tokenizer.ggml.scores is not an array of float32");
  for (const auto& e : scores.elements) v.scores.push_back(static_cast<float>(e.f));
  v.token_types = int_array(f, "tokenizer.ggml.token_type");
  if (v.scores.size() != v.tokens.size() || v.token_types.size() != v.tokens.size()) {
    throw_format("GGUF '" + f.label() + "': tokenizer.ggml.scores/token_type do not have one " +
                 "entry per token (" + std::to_string(v.tokens.size()) + ")");
  }
  const auto id_of = [&](const char* key) -> int {
    if (!f.has(key)) return -1;
    const uint64_t id = f.get_uint(key);
    if (id >= v.tokens.size()) {
      throw_format("GGUF '" + f.label() + "': " + key + " = " + std::to_string(id) +
                   " is outside the vocabulary");
    }
    return static_cast<int>(id);
  };
  v.bos = id_of("tokenizer.ggml.bos_token_id");
  v.eos = id_of("tokenizer.ggml.eos_token_id");
  v.unk = id_of("tokenizer.ggml.unknown_token_id");
  if (v.bos < 0 || v.eos < 0)
    throw_format("GGUF '" + f.label() + "': tokenizer.ggml.bos_token_id/eos_token_id missing");
  v.add_bos = f.get_bool("tokenizer.ggml.add_bos_token", true);
  v.add_space_prefix = f.get_bool("tokenizer.ggml.add_space_prefix", true);
  const auto eot = std::find(v.tokens.begin(), v.tokens.end(), "<end_of_turn>");
  if (eot != v.tokens.end()) v.eot = static_cast<int>(eot - v.tokens.begin());
  // Only a file whose chat template uses Gemma's turns gets the chat format (a base model's GGUF
  // has no template and is prompted with plain text).
  v.gemma_chat =
      v.eot >= 0 && f.has("tokenizer.chat_template") &&
      f.get_string("tokenizer.chat_template").find("<start_of_turn>") != std::string::npos;
  return std::make_unique<SpmTokenizer>(std::move(v));
}

std::vector<int> SpmTokenizer::encode(std::string_view text, bool add_bos,
                                      bool parse_special) const {
  std::vector<int> out;
  if (add_bos) out.push_back(vocab_.bos);
  // Split out user-defined pieces (and control pieces with parse_special), leftmost-longest.
  size_t fragment = 0;
  for (size_t i = 0; i < text.size();) {
    int match = -1;
    size_t match_len = 0;
    for (const auto& [piece, id] : specials_[static_cast<unsigned char>(text[i])]) {
      if (!parse_special && vocab_.token_types[id] == kControl) continue;
      if (piece.size() <= text.size() - i && text.compare(i, piece.size(), piece) == 0) {
        match = id;
        match_len = piece.size();
        break;  // longest first
      }
    }
    if (match < 0) {
      ++i;
      continue;
    }
    if (i > fragment) encode_fragment(text.substr(fragment, i - fragment), fragment == 0, out);
    out.push_back(match);
    i += match_len;
    fragment = i;
  }
  if (fragment < text.size()) encode_fragment(text.substr(fragment), fragment == 0, out);
  return out;
}

void SpmTokenizer::encode_fragment(std::string_view raw, bool at_start,
                                   std::vector<int>& out) const {
  std::string text;
  text.reserve(raw.size() + 8);
  if (vocab_.add_space_prefix && at_start) text += kSpaceMark;
  for (char c : raw) {
    if (c == ' ') {
      text += kSpaceMark;
    } else {
      text += c;
    }
  }
  std::vector<Symbol> sym;
  for (size_t i = 0; i < text.size();) {
    // One UTF-8 character per symbol; a lead byte without its continuation bytes stands alone (so
    // it cannot swallow the escaped space after it) and falls back to a byte piece.
    const size_t want = std::min(utf8_length(static_cast<unsigned char>(text[i])), text.size() - i);
    size_t len = 1;
    while (len < want && (static_cast<unsigned char>(text[i + len]) & 0xC0) == 0x80) ++len;
    if (len < want) len = 1;
    const int idx = static_cast<int>(sym.size());
    sym.push_back({idx - 1, idx + 1, i, len});
    i += len;
  }
  if (sym.empty()) return;
  sym.back().next = -1;
  std::priority_queue<Bigram> queue;
  const auto try_pair = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const std::string_view joined(text.data() + sym[left].begin, sym[left].len + sym[right].len);
    const auto it = ids_.find(std::string(joined));
    if (it == ids_.end() || vocab_.token_types[it->second] != kNormal) return;
    queue.push({vocab_.scores[it->second], left, joined.size()});
  };
  for (size_t i = 1; i < sym.size(); ++i) try_pair(static_cast<int>(i) - 1, static_cast<int>(i));
  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
    Symbol& left = sym[b.left];
    if (left.len == 0 || left.next < 0) continue;
    Symbol& right = sym[left.next];
    if (left.len + right.len != b.len) continue;  // stale: one side changed since queued
    left.len += right.len;
    right.len = 0;
    left.next = right.next;
    if (right.next >= 0) sym[right.next].prev = b.left;
    try_pair(left.prev, b.left);
    try_pair(b.left, left.next);
  }
  for (int i = 0; i >= 0; i = sym[i].next)
    emit_symbol(std::string_view(text.data() + sym[i].begin, sym[i].len), out);
}

void SpmTokenizer::emit_symbol(std::string_view piece, std::vector<int>& out) const {
  const auto it = ids_.find(std::string(piece));
  if (it != ids_.end() && vocab_.token_types[it->second] != kControl) {
    out.push_back(it->second);
    return;
  }
  for (char c : piece) out.push_back(byte_ids_[static_cast<unsigned char>(c)]);
}

std::string SpmTokenizer::decode(int token, int prev) const {
  if (token < 0 || token >= vocab_size())
    throw_invalid("token id " + std::to_string(token) + " is outside the vocabulary");
  const int32_t type = vocab_.token_types[token];
  if (type == kControl) return "";
  const std::string& piece = vocab_.tokens[token];
  if (type == kByte) {
    for (int b = 0; b < 256; ++b) {
      if (byte_ids_[b] == token) return std::string(1, static_cast<char>(b));
    }
  }
  if (type == kUserDefined) return piece;
  std::string s;
  for (size_t i = 0; i < piece.size();) {
    if (piece.compare(i, kSpaceMark.size(), kSpaceMark) == 0) {
      s += ' ';
      i += kSpaceMark.size();
    } else {
      s += piece[i++];
    }
  }
  // sentencepiece drops the space prefix it added before the first piece.
  if (vocab_.add_space_prefix && prev == vocab_.bos && !s.empty() && s[0] == ' ') s.erase(0, 1);
  return s;
}

std::string SpmTokenizer::chat_prompt(std::string_view user_message) const {
  return gemma_chat_prompt(user_message);
}

std::string gemma_chat_prompt(std::string_view user_message) {
  std::string p = "<start_of_turn>user\n";
  p.append(user_message);
  p += "<end_of_turn>\n<start_of_turn>model\n";
  return p;
}

}  // namespace polarquant::model
