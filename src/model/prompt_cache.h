// `generate --prompt-cache FILE`: the prompt's KV cache saved to a file (src/cache/cache_file.h)
// and restored instead of running the prompt again, as llama.cpp's --prompt-cache does. CPU
// runtime only (the GPU runtime's cache lives on the device).
#pragma once

#include "cache/cache_file.h"
#include "model/llama_model.h"
#include "model/tokenizer.h"
#include "model/transformer.h"

#include <cstddef>
#include <string>
#include <vector>

namespace polarquant::model {

// The model a cache file belongs to: architecture and format, shapes, and a 64-bit FNV-1a hash of
// the configuration, the tokenizer's vocabulary (every token's bytes, BOS/EOS), the GGUF metadata
// (every key and value), every weight's type and shape with its first and last 4 KiB, and the
// norms. Computing it reads about 0.5 MB of weights, not the whole model.
CacheOwner cache_owner(const LlamaModel& model, const Tokenizer& tokenizer);

struct PromptPrefill {
  SequenceId seq = 0;
  std::vector<float> logits;  // after the last prompt token
  size_t reused = 0;          // prompt tokens restored from the file (the rest were computed)
  bool saved = false;         // the file was (re)written
  std::string note;           // what happened, for the user
};

// Prefills `prompt` into a new sequence of tf. When `path` holds a cache file whose tokens are a
// prefix of the prompt, its K/V are restored and only the rest of the prompt is computed (none when
// the whole prompt matches: the file keeps the last logits). Then, unless read_only or the file
// already held exactly this prompt, the prompt's cache is written to path (a temporary file
// renamed). A file written for another model or cache configuration, of another version, or
// truncated or corrupt is refused with an Error before anything is loaded.
//
// The result is bit-identical to prefilling without the file when the whole prompt matches, or
// when the file's tokens end on a prefill chunk boundary (RuntimeOptions::prefill_chunk); other
// prefixes run the rest in different chunks than one uninterrupted prefill would.
PromptPrefill prefill_with_prompt_cache(Transformer& tf, const CacheOwner& owner,
                                        const std::vector<int>& prompt, const std::string& path,
                                        bool read_only);

}  // namespace polarquant::model
