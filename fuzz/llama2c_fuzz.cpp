// libFuzzer target: llama2.c checkpoint parsing. The first 28 bytes are the header; the fuzzer
// finds small valid configurations itself, so tensor offsets and sizes are exercised too.
#include "model/llama_model.h"

#include <polarquant/error.h>

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    (void)polarquant::model::LlamaModel::parse_llama2c(data, size, "fuzz");
  } catch (const polarquant::Error&) {
  }
  return 0;
}
