// libFuzzer target: GGUF parsing, then model construction and tokenizer construction from whatever
// parsed. Any input must end in success or a polarquant::Error, never a crash or sanitizer report.
#include "model/bpe_tokenizer.h"
#include "model/gguf.h"
#include "model/llama_model.h"

#include <polarquant/error.h>

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace polarquant::model;
  try {
    const GgufFile f = GgufFile::parse(data, size, "fuzz");
    try {
      (void)LlamaModel::from_gguf(f);
    } catch (const polarquant::Error&) {
    }
    try {
      const auto tok = BpeTokenizer::from_gguf(f);
      const auto ids = tok->encode("Hello, world! 123 <|im_start|>", true, true);
      for (int id : ids) (void)tok->decode(id, -1);
    } catch (const polarquant::Error&) {
    }
  } catch (const polarquant::Error&) {
  }
  return 0;
}
