// Tokenizers: the GPT-2 pre-tokenizer on designed strings, BPE merge order on a designed
// vocabulary, byte-exact round trips (decode(encode(x)) == x) on arbitrary bytes, and the llama2.c
// sentencepiece tokenizer on the tiny model's vocabulary.
#include "model/bpe_tokenizer.h"
#include "model/gguf.h"
#include "model/llama_model.h"
#include "model/sentencepiece_tokenizer.h"
#include "model_test_util.h"

#include <polarquant/error.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

namespace polarquant::model {
namespace {

using V = std::vector<std::string>;

TEST(TokenizerPretokenize, FollowsTheGpt2Regex) {
  EXPECT_EQ(bpe_pretokenize("Hello world", false), (V{"Hello", " world"}));
  EXPECT_EQ(bpe_pretokenize("it's we'll", false), (V{"it", "'s", " we", "'ll"}));
  EXPECT_EQ(bpe_pretokenize("a  b", false), (V{"a", " ", " b"}));
  EXPECT_EQ(bpe_pretokenize("a\n\nb", false), (V{"a", "\n", "\n", "b"}));
  EXPECT_EQ(bpe_pretokenize("end.  ", false), (V{"end", ".", "  "}));
  EXPECT_EQ(bpe_pretokenize("x -- y!?", false), (V{"x", " --", " y", "!?"}));
  EXPECT_EQ(bpe_pretokenize("in 1811", false), (V{"in", " 1811"}));
  // With digits split first (SmolLM2): each digit is its own word, the space before them too.
  EXPECT_EQ(bpe_pretokenize("in 1811", true), (V{"in", " ", "1", "8", "1", "1"}));
  EXPECT_EQ(bpe_pretokenize("caf\xC3\xA9 \xE2\x80\x9Chi\xE2\x80\x9D", false),
            (V{"caf\xC3\xA9", " \xE2\x80\x9C", "hi", "\xE2\x80\x9D"}));
}

TEST(TokenizerPretokenize, PiecesConcatenateToTheInput) {
  std::mt19937 rng(11);
  const std::string alphabet = "ab 1'\n\t.,\xC3\xA9\xE2\x80\x9C\xFF";
  for (int trial = 0; trial < 500; ++trial) {
    std::string s;
    const int n = static_cast<int>(rng() % 40);
    for (int i = 0; i < n; ++i) s += alphabet[rng() % alphabet.size()];
    for (bool digits : {false, true}) {
      std::string joined;
      for (const auto& p : bpe_pretokenize(s, digits)) {
        ASSERT_FALSE(p.empty());
        joined += p;
      }
      ASSERT_EQ(joined, s);
    }
  }
}

// A designed vocabulary: merges "a b" (rank 0), "ab c" (1), "b c" (2): "abc" must merge a+b first,
// then ab+c, although "b c" also exists.
TEST(TokenizerBpe, MergesByRankAndRoundTrips) {
  BpeVocabulary v;
  const std::string G = "\xC4\xA0";  // U+0120, GPT-2's stand-in for a space byte
  v.tokens = {"<|end|>", "a", "b", "c", G, "ab", "abc", "bc", G + "a"};
  v.token_types = {3, 1, 1, 1, 1, 1, 1, 1, 1};
  v.merges = {"a b", "ab c", "b c", G + " a"};
  v.eos = 0;
  v.digits_split = false;
  BpeTokenizer tok(v);
  EXPECT_EQ(tok.encode("abc", false, false), (std::vector<int>{6}));
  EXPECT_EQ(tok.encode("bc", false, false), (std::vector<int>{7}));
  EXPECT_EQ(tok.encode("cab a", false, false), (std::vector<int>{3, 5, 8}));
  EXPECT_EQ(tok.encode("a<|end|>b", false, true), (std::vector<int>{1, 0, 2}));
  EXPECT_EQ(tok.decode(8, -1), " a");
  EXPECT_EQ(tok.decode(0, -1), "");
  EXPECT_TRUE(tok.is_end_of_generation(0));
  // A byte with no token and no unknown token cannot be encoded: a clear error, not a wrong id.
  EXPECT_THROW(tok.encode("z", false, false), Error);
  BpeVocabulary bad = v;
  bad.merges = {"ab"};
  EXPECT_THROW(BpeTokenizer{bad}, Error);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(TokenizerBpe, SmolLM2RoundTripsTextAndBytes) {
  const std::string path = polarquant::testing::smollm2_path();
  if (path.empty()) GTEST_SKIP() << "SmolLM2 GGUF absent (run scripts/fetch_model.sh)";
  const GgufFile f = GgufFile::open(path);
  const auto tok = BpeTokenizer::from_gguf(f);
  EXPECT_EQ(tok->vocab_size(), 49152);
  EXPECT_TRUE(tok->has_chat_template());
  std::string text =
      "It is a truth universally acknowledged, that a single man in possession\n\n"
      "of a good fortune, must be in want of a wife. \xE2\x80\x9CMy dear Mr. Bennet,\xE2\x80\x9D "
      "1796.";
  std::mt19937 rng(3);
  // Random valid UTF-8 (1- to 3-byte code points) and printable ASCII.
  std::string noise;
  for (int i = 0; i < 300; ++i) {
    const uint32_t cp = i % 3 == 0   ? 0x20 + rng() % 0x5F
                        : i % 3 == 1 ? 0xA0 + rng() % 0x700
                                     : 0x800 + rng() % 0xD000;
    if (cp < 0x80) {
      noise += static_cast<char>(cp);
    } else if (cp < 0x800) {
      noise += static_cast<char>(0xC0 | (cp >> 6));
      noise += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      noise += static_cast<char>(0xE0 | (cp >> 12));
      noise += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      noise += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  for (const std::string& s : {text, noise}) {
    const auto ids = tok->encode(s, false, false);
    std::string back;
    for (int id : ids) back += tok->decode(id, -1);
    EXPECT_EQ(back, s);
  }
  // Bytes the vocabulary lacks (0xFF never occurs in UTF-8) become the unknown token.
  EXPECT_EQ(tok->encode("\xFF", false, false), (std::vector<int>{0}));
  // Common words are single tokens, and BPE compresses English text to well under a token per
  // 3 characters.
  EXPECT_EQ(tok->encode(" the", false, false).size(), 1u);
  EXPECT_LT(tok->encode(text, false, false).size() * 3, text.size());
  const auto chat = tok->encode(chatml_prompt("Hi"), false, true);
  ASSERT_FALSE(chat.empty());
  EXPECT_EQ(chat.front(), 1);                 // <|im_start|>
  EXPECT_TRUE(tok->is_end_of_generation(2));  // <|im_end|>
}

TEST(TokenizerSentencePiece, Tok512EncodesAndDecodes) {
  const std::string path = polarquant::testing::shared_dir() + "/models/tok512.bin";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "../shared/models/tok512.bin absent";
  const auto tok = SentencePieceTokenizer::load(path, 512);
  const std::string text = "Once upon a time, there was a little girl named Lily.";
  const auto ids = tok->encode(text, true, false);
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids[0], 1);
  EXPECT_LT(ids.size(), text.size() / 2);  // merges happened
  std::string back;
  for (size_t i = 1; i < ids.size(); ++i) back += tok->decode(ids[i], ids[i - 1]);
  EXPECT_EQ(back, text);
  // Characters outside the vocabulary fall back to bytes and still round-trip.
  const auto ids2 = tok->encode("x\xC3\xA9\x01", true, false);
  std::string back2;
  for (size_t i = 1; i < ids2.size(); ++i) back2 += tok->decode(ids2[i], ids2[i - 1]);
  EXPECT_EQ(back2, "x\xC3\xA9\x01");
}

TEST(TokenizerSentencePiece, TruncatedFilesAreFormatErrors) {
  const std::string path = polarquant::testing::shared_dir() + "/models/tok512.bin";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "../shared/models/tok512.bin absent";
  const std::string bytes = read_file(path);
  for (size_t n = 0; n < bytes.size(); n += 7) {
    EXPECT_THROW(SentencePieceTokenizer::parse(reinterpret_cast<const uint8_t*>(bytes.data()), n,
                                               512, "cut"),
                 Error)
        << n;
  }
  EXPECT_NO_THROW(SentencePieceTokenizer::parse(reinterpret_cast<const uint8_t*>(bytes.data()),
                                                bytes.size(), 512, "ok"));
}

}  // namespace
}  // namespace polarquant::model
