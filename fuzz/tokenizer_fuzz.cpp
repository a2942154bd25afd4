// libFuzzer target: the llama2.c tokenizer file reader (vocabulary of 32 pieces), then encoding the
// input itself as text with both tokenizers' pre-tokenization paths.
#include "model/bpe_tokenizer.h"
#include "model/sentencepiece_tokenizer.h"

#include <polarquant/error.h>

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace polarquant::model;
  try {
    const auto tok = SentencePieceTokenizer::parse(data, size, 32, "fuzz");
    const auto ids =
        tok->encode(std::string_view(reinterpret_cast<const char*>(data), size), true, false);
    for (size_t i = 1; i < ids.size(); ++i) (void)tok->decode(ids[i], ids[i - 1]);
  } catch (const polarquant::Error&) {
  }
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  size_t total = 0;
  for (const auto& piece : bpe_pretokenize(text, true)) total += piece.size();
  if (total != size) __builtin_trap();  // the pieces must cover the input exactly
  return 0;
}
