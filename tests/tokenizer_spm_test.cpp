// The GGUF sentencepiece tokenizer (spm_tokenizer.h) on a hand-built vocabulary: merge order by
// score, byte fallback, user-defined and control pieces split out first, space escaping and
// decoding; and on the real Gemma 3 vocabulary when the model is cached.
#include "model/llama_model.h"
#include "model/spm_tokenizer.h"

#include <polarquant/error.h>

#include <gtest/gtest.h>

#include <cstdio>
#include <random>

#include "model_test_util.h"

namespace polarquant::model {
namespace {

const std::string kSp = "\xE2\x96\x81";  // U+2581

// ids: 0 <pad>, 1 <eos>, 2 <bos>, 3..258 <0x00>..<0xFF>, then the pieces below.
SpmVocabulary small_vocab(bool add_space_prefix) {
  SpmVocabulary v;
  auto add = [&](const std::string& piece, float score, int32_t type) {
    v.tokens.push_back(piece);
    v.scores.push_back(score);
    v.token_types.push_back(type);
    return static_cast<int>(v.tokens.size() - 1);
  };
  add("<pad>", 0, 3);
  v.eos = add("<eos>", 0, 3);
  v.bos = add("<bos>", 0, 3);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    add(name, 0, 6);
  }
  add(kSp, -10, 1);                    // 259
  add("a", -11, 1);                    // 260
  add("b", -12, 1);                    // 261
  add("c", -13, 1);                    // 262
  add("ab", -5, 1);                    // 263
  add("bc", -1, 1);                    // 264: outscores "ab"
  add(kSp + "a", -2, 1);               // 265
  add("\n", 0, 4);                     // 266: user-defined
  add("  ", 0, 4);                     // 267: user-defined, stored with plain spaces
  v.eot = add("<end_of_turn>", 0, 3);  // 268
  add("bcx", -0.5f, 1);  // 269: not reachable from "bc" + "x" pieces unless "x" exists
  v.add_space_prefix = add_space_prefix;
  return v;
}

TEST(SpmTokenizer, MergesTheHighestScoringPairFirst) {
  SpmTokenizer tok(small_vocab(false));
  // "abc": "bc" (-1) beats "ab" (-5), so a + bc, not ab + c.
  EXPECT_EQ(tok.encode("abc", false, false), (std::vector<int>{260, 264}));
  EXPECT_EQ(tok.encode("ab", false, false), (std::vector<int>{263}));
  // Spaces become U+2581 and merge with the next letter.
  EXPECT_EQ(tok.encode("a a", true, false), (std::vector<int>{2, 260, 265}));
}

TEST(SpmTokenizer, UnknownCharactersFallBackToBytes) {
  SpmTokenizer tok(small_vocab(false));
  // "é" is C3 A9; "x" is 0x78.
  EXPECT_EQ(tok.encode("\xC3\xA9x", false, false),
            (std::vector<int>{3 + 0xC3, 3 + 0xA9, 3 + 0x78}));
  EXPECT_EQ(tok.decode(3 + 0x78, -1), "x");
}

TEST(SpmTokenizer, UserDefinedAndControlPiecesAreSplitOutFirst) {
  SpmTokenizer tok(small_vocab(false));
  EXPECT_EQ(tok.encode("a\nb", false, false), (std::vector<int>{260, 266, 261}));
  EXPECT_EQ(tok.encode("a  b", false, false), (std::vector<int>{260, 267, 261}));
  // Control pieces only with parse_special; otherwise their characters are plain text.
  EXPECT_EQ(tok.encode("a<end_of_turn>", false, true), (std::vector<int>{260, 268}));
  const auto plain = tok.encode("a<end_of_turn>", false, false);
  EXPECT_EQ(plain.size(), 14u);
  EXPECT_EQ(plain[1], 3 + '<');
  EXPECT_TRUE(tok.is_end_of_generation(268));
  EXPECT_TRUE(tok.is_end_of_generation(1));
}

TEST(SpmTokenizer, SpacePrefixAndDecoding) {
  SpmTokenizer with_prefix(small_vocab(true));
  EXPECT_EQ(with_prefix.encode("a", true, false), (std::vector<int>{2, 265}));
  EXPECT_EQ(with_prefix.decode(265, 2), "a");  // the added space is dropped after BOS
  SpmTokenizer no_prefix(small_vocab(false));
  EXPECT_EQ(no_prefix.decode(265, 2), " a");
  EXPECT_EQ(no_prefix.decode(2, -1), "");  // control
  EXPECT_EQ(no_prefix.decode(267, -1), "  ");
  EXPECT_THROW(no_prefix.decode(100000, -1), Error);
}

TEST(SpmTokenizer, InconsistentVocabulariesAreRefused) {
  SpmVocabulary v = small_vocab(false);
  v.scores.pop_back();
  EXPECT_THROW(SpmTokenizer{v}, Error);
  SpmVocabulary no_bytes = small_vocab(false);
  no_bytes.token_types[3 + 0x41] = 1;  // <0x41> no longer a byte piece
  try {
    SpmTokenizer t(no_bytes);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("<0x41>"), std::string::npos) << e.what();
  }
}

TEST(SpmTokenizer, RandomTextRoundTrips) {
  // Any byte string without U+2581 (which decodes to a space) comes back exactly: invalid UTF-8
  // and lone lead bytes fall back to byte pieces, user-defined runs decode to themselves.
  SpmTokenizer tok(small_vocab(false));
  const char alphabet[] = {'a', 'b', 'c', ' ', '\n', '<', 'x', '\xC3', '\xA9', '\xFF', '\x80'};
  std::mt19937 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    std::string text(rng() % 40, ' ');
    for (char& c : text) c = alphabet[rng() % sizeof alphabet];
    const auto ids = tok.encode(text, trial % 2 == 0, trial % 3 == 0);
    std::string back;
    int prev = -1;
    for (int id : ids) {
      back += tok.decode(id, prev);
      prev = id;
    }
    ASSERT_EQ(back, text) << "trial " << trial;
  }
}

TEST(SpmTokenizer, GemmaChatFormat) {
  EXPECT_EQ(gemma_chat_prompt("Hi"),
            "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n");
}

}  // namespace
}  // namespace polarquant::model
