#include "model/bpe_tokenizer.h"

#include "model/gguf.h"

#include <polarquant/error.h>

#include <algorithm>
#include <limits>

namespace polarquant::model {

namespace {

// Decodes one UTF-8 code point at s[i]; malformed bytes decode as themselves (length 1) so that any
// byte string tokenizes.
uint32_t next_codepoint(std::string_view s, size_t i, size_t* len) {
  const auto b = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t c = b(i);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (n == 0 || i + n > s.size()) {
    *len = 1;
    return c;
  }
  uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
  for (size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xC0) != 0x80) {
      *len = 1;
      return c;
    }
    cp = (cp << 6) | (b(i + k) & 0x3F);
  }
  *len = n;
  return cp;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Unicode classes of the GPT-2 regex, approximated: exact for ASCII, Latin-1 and the general
// punctuation block (what English text contains); other code points count as letters, which is what
// \p{L} says for most of them.
bool is_space(uint32_t cp) {
  return cp == ' ' || (cp >= '\t' && cp <= '\r') || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}
bool is_number(uint32_t cp) {
  return (cp >= '0' && cp <= '9') || cp == 0xB2 || cp == 0xB3 || cp == 0xB9 ||
         (cp >= 0xBC && cp <= 0xBE);
}
bool is_letter(uint32_t cp) {
  if (cp < 0x80) return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z');
  if (cp < 0xC0) return cp == 0xAA || cp == 0xB5 || cp == 0xBA;
  if (cp == 0xD7 || cp == 0xF7) return false;
  if (cp >= 0x2000 && cp <= 0x2BFF) return false;  // punctuation, symbols, arrows, math
  if (cp >= 0x3000 && cp <= 0x303F) return false;  // CJK punctuation
  if (cp >= 0xFFF0 || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
  return !is_space(cp) && !is_number(cp);
}

// GPT-2's printable stand-ins for the 256 byte values.
void build_byte_map(std::string (&to_unicode)[256], std::unordered_map<uint32_t, uint8_t>& back) {
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    const uint32_t cp =
        printable ? static_cast<uint32_t>(b) : 256u + static_cast<uint32_t>(extra++);
    append_utf8(to_unicode[b], cp);
    back[cp] = static_cast<uint8_t>(b);
  }
}

void split_segment(std::string_view s, std::vector<std::string>& out) {
  size_t i = 0;
  const size_t n = s.size();
  auto cp_at = [&](size_t k, size_t* len) { return next_codepoint(s, k, len); };
  while (i < n) {
    size_t len = 0;
    const uint32_t c = cp_at(i, &len);
    // 's 't 're 've 'm 'll 'd
    if (c == '\'' && i + 1 < n) {
      const char a = s[i + 1];
      const char b = i + 2 < n ? s[i + 2] : '\0';
      size_t m = 0;
      if (a == 's' || a == 't' || a == 'm' || a == 'd')
        m = 2;
      else if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
        m = 3;
      if (m != 0) {
        out.emplace_back(s.substr(i, m));
        i += m;
        continue;
      }
    }
    // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+'
    size_t j = i;
    uint32_t d = c;
    size_t dlen = len;
    if (c == ' ' && i + 1 < n) {
      j = i + 1;
      d = cp_at(j, &dlen);
    }
    if (!is_space(d) || j == i) {
      int cls = is_letter(d) ? 0 : is_number(d) ? 1 : is_space(d) ? -1 : 2;
      if (cls >= 0) {
        size_t k = j + dlen;
        while (k < n) {
          size_t l = 0;
          const uint32_t e = cp_at(k, &l);
          const int ecls = is_letter(e) ? 0 : is_number(e) ? 1 : is_space(e) ? -1 : 2;
          if (ecls != cls) break;
          k += l;
        }
        out.emplace_back(s.substr(i, k - i));
        i = k;
        continue;
      }
    }
    // '\s+(?!\S)' then '\s+': a whitespace run, leaving its last character to the next word when a
    // non-space follows and the run is longer than one character.
    size_t k = i, last = i;
    while (k < n) {
      size_t l = 0;
      if (!is_space(cp_at(k, &l))) break;
      last = k;
      k += l;
    }
    if (k < n && last > i) k = last;
    out.emplace_back(s.substr(i, k - i));
    i = k;
  }
}

}  // namespace

std::vector<std::string> bpe_pretokenize(std::string_view text, bool digits_split) {
  std::vector<std::string> out;
  if (!digits_split) {
    split_segment(text, out);
    return out;
  }
  size_t start = 0, i = 0;
  while (i < text.size()) {
    size_t len = 0;
    const uint32_t c = next_codepoint(text, i, &len);
    if (is_number(c)) {
      if (i > start) split_segment(text.substr(start, i - start), out);
      out.emplace_back(text.substr(i, len));
      start = i + len;
    }
    i += len;
  }
  if (start < text.size()) split_segment(text.substr(start), out);
  return out;
}

BpeTokenizer::BpeTokenizer(BpeVocabulary vocab) : vocab_(std::move(vocab)) {
  build_byte_map(byte_to_unicode_, unicode_to_byte_);
  const int n = static_cast<int>(vocab_.tokens.size());
  if (n == 0) throw_format("BPE vocabulary is empty");
  if (!vocab_.token_types.empty() && static_cast<int>(vocab_.token_types.size()) != n) {
    throw_format("BPE token_type has " + std::to_string(vocab_.token_types.size()) +
                 " entries, tokens " + std::to_string(n));
  }
  for (int id : {vocab_.bos, vocab_.eos, vocab_.eot, vocab_.unk}) {
    if (id < -1 || id >= n)
      throw_format("BPE special token id " + std::to_string(id) + " is outside the vocabulary");
  }
  for (int i = 0; i < n; ++i) {
    token_ids_.emplace(vocab_.tokens[i], i);
    const int type = vocab_.token_types.empty() ? 1 : vocab_.token_types[i];
    if ((type == 3 || type == 4) && !vocab_.tokens[i].empty())
      specials_.emplace_back(vocab_.tokens[i], i);
  }
  std::sort(specials_.begin(), specials_.end(),
            [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  for (size_t r = 0; r < vocab_.merges.size(); ++r) {
    const std::string& m = vocab_.merges[r];
    const size_t sp = m.find(' ');
    if (sp == std::string::npos || sp == 0 || sp + 1 == m.size() ||
        m.find(' ', sp + 1) != std::string::npos) {
      throw_format("BPE merge " + std::to_string(r) + " ('" + m +
                   "') is not two symbols separated by one space");
    }
    merge_ranks_.emplace(m, static_cast<int>(r));  // the first occurrence keeps its rank
  }
  chatml_ = token_ids_.count("<|im_start|>") != 0 && token_ids_.count("<|im_end|>") != 0;
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_gguf(const GgufFile& f) {
  const std::string model = f.get_string("tokenizer.ggml.model");
  if (model != "gpt2") {
    throw Error(ErrorKind::kUnsupported,
                "GGUF '" + f.label() + "': tokenizer.ggml.model '" + model +
                    "' is not supported (expected 'gpt2' byte-level BPE or 'llama' sentencepiece)");
  }
  BpeVocabulary v;
  v.tokens = f.get_string_array("tokenizer.ggml.tokens");
  v.merges = f.get_string_array("tokenizer.ggml.merges");
  if (f.has("tokenizer.ggml.token_type")) {
    const GgufValue& tt = f.get("tokenizer.ggml.token_type");
    if (tt.type != GgufType::kArray ||
        !(tt.element_type == GgufType::kI32 || tt.element_type == GgufType::kU32)) {
      throw_format("GGUF '" + f.label() + "': tokenizer.ggml.token_type is not an array of int32");
    }
    for (const auto& e : tt.elements)
      v.token_types.push_back(
          static_cast<int32_t>(e.type == GgufType::kI32 ? e.i : static_cast<int64_t>(e.u)));
  }
  const auto id_or = [&](const char* key) -> int {
    if (!f.has(key)) return -1;
    const uint64_t id = f.get_uint(key);
    if (id >= v.tokens.size())
      throw_format("GGUF '" + f.label() + "': " + key + " = " + std::to_string(id) +
                   " is outside the vocabulary");
    return static_cast<int>(id);
  };
  v.bos = id_or("tokenizer.ggml.bos_token_id");
  v.eos = id_or("tokenizer.ggml.eos_token_id");
  v.unk = id_or("tokenizer.ggml.unknown_token_id");
  v.add_bos = f.get_bool("tokenizer.ggml.add_bos_token", false);
  for (const char* eot : {"<|im_end|>", "<|eot_id|>", "<|end|>"}) {
    const auto it = std::find(v.tokens.begin(), v.tokens.end(), eot);
    if (it != v.tokens.end()) {
      v.eot = static_cast<int>(it - v.tokens.begin());
      break;
    }
  }
  const std::string pre =
      f.has("tokenizer.ggml.pre") ? f.get_string("tokenizer.ggml.pre") : "default";
  // The "smollm" (and starcoder-family) pre-tokenizers split each digit before the GPT-2 regex.
  v.digits_split = pre == "smollm" || pre == "starcoder" || pre == "refact";
  return std::make_unique<BpeTokenizer>(std::move(v));
}

void BpeTokenizer::encode_word(std::string_view word, std::vector<int>& out) const {
  std::vector<std::string> symbols;
  symbols.reserve(word.size());
  for (unsigned char b : word) symbols.push_back(byte_to_unicode_[b]);
  std::string key;
  while (symbols.size() > 1) {
    int best_rank = std::numeric_limits<int>::max();
    size_t best = 0;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      key.assign(symbols[i]).append(1, ' ').append(symbols[i + 1]);
      const auto it = merge_ranks_.find(key);
      if (it != merge_ranks_.end() && it->second < best_rank) {
        best_rank = it->second;
        best = i;
      }
    }
    if (best_rank == std::numeric_limits<int>::max()) break;
    symbols[best] += symbols[best + 1];
    symbols.erase(symbols.begin() + static_cast<long>(best) + 1);
  }
  for (const auto& s : symbols) {
    const auto it = token_ids_.find(s);
    if (it != token_ids_.end()) {
      out.push_back(it->second);
      continue;
    }
    // A merged symbol without a token (inconsistent merges): fall back to its single bytes.
    for (size_t i = 0; i < s.size();) {
      size_t len = 0;
      const uint32_t cp = next_codepoint(s, i, &len);
      const auto b = unicode_to_byte_.find(cp);
      const auto t = b == unicode_to_byte_.end() ? token_ids_.end()
                                                 : token_ids_.find(byte_to_unicode_[b->second]);
      if (t != token_ids_.end()) {
        out.push_back(t->second);
      } else if (vocab_.unk >= 0) {
        out.push_back(vocab_.unk);  // e.g. bytes that never occur in UTF-8 (0xF5..0xFF)
      } else {
        throw_invalid("BPE vocabulary has no token for a byte of '" + s + "' and no unknown token");
      }
      i += len;
    }
  }
}

void BpeTokenizer::encode_plain(std::string_view text, std::vector<int>& out) const {
  for (const auto& word : bpe_pretokenize(text, vocab_.digits_split)) encode_word(word, out);
}

std::vector<int> BpeTokenizer::encode(std::string_view text, bool add_bos,
                                      bool parse_special) const {
  std::vector<int> out;
  if (add_bos && vocab_.bos >= 0) out.push_back(vocab_.bos);
  if (!parse_special || specials_.empty()) {
    encode_plain(text, out);
    return out;
  }
  size_t start = 0;
  for (size_t i = 0; i < text.size();) {
    int match = -1;
    size_t match_len = 0;
    if (text[i] == '<') {  // every control token of these vocabularies starts with '<'
      for (const auto& [s, id] : specials_) {
        if (text.compare(i, s.size(), s) == 0) {
          match = id;
          match_len = s.size();
          break;
        }
      }
    }
    if (match < 0) {
      ++i;
      continue;
    }
    if (i > start) encode_plain(text.substr(start, i - start), out);
    out.push_back(match);
    i += match_len;
    start = i;
  }
  if (start < text.size()) encode_plain(text.substr(start), out);
  return out;
}

std::string BpeTokenizer::decode(int token, int /*prev*/) const {
  if (token < 0 || token >= vocab_size())
    throw_invalid("token id " + std::to_string(token) + " is outside the vocabulary");
  const int type = vocab_.token_types.empty() ? 1 : vocab_.token_types[token];
  if (type == 3) return "";
  const std::string& s = vocab_.tokens[token];
  if (type == 4) return s;
  std::string out;
  for (size_t i = 0; i < s.size();) {
    size_t len = 0;
    const uint32_t cp = next_codepoint(s, i, &len);
    const auto it = unicode_to_byte_.find(cp);
    if (it != unicode_to_byte_.end())
      out += static_cast<char>(it->second);
    else
      out.append(s, i, len);
    i += len;
  }
  return out;
}

}  // namespace polarquant::model
