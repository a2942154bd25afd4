// libFuzzer target: the KV cache file (src/cache/cache_file.h). Built with
// FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION, which makes the reader ignore section checksums, so
// mutated headers, counts, rows and pages reach the checks behind them. A file that parses and
// names a small cache is restored into a cache built from its own header, read back, and extended
// by a token; anything else must end in a polarquant::Error.
#include "cache/cache_file.h"

#include <polarquant/error.h>
#include <polarquant/kv_cache.h>

#include <cstddef>
#include <cstdint>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace polarquant;
  try {
    const CacheFile file = parse_cache_file(data, size, "fuzz");
    const CacheFileHeader& h = file.header;
    // Keep each run small: big shapes only cost time (the parser has checked the ranges).
    if (h.owner.n_layers > 4 || h.owner.n_kv_heads > 4 || h.owner.head_dim > 128 ||
        h.page_tokens > 256 || h.sink_tokens > 1024 || h.recent_tokens > 1024 ||
        h.tokens.size() > 4096) {
      return 0;
    }
    KvCacheOptions o;
    o.n_layers = static_cast<int>(h.owner.n_layers);
    o.n_kv_heads = static_cast<int>(h.owner.n_kv_heads);
    o.head_dim = static_cast<int>(h.owner.head_dim);
    o.key_codec = h.key_codec;
    o.value_codec = h.value_codec;
    o.seed = h.seed;
    o.page_tokens = static_cast<int>(h.page_tokens);
    o.sink_tokens = static_cast<int>(h.sink_tokens);
    o.recent_tokens = static_cast<int>(h.recent_tokens);
    o.center_keys = h.center_keys;
    o.quantize_generated = h.quantize_generated;
    if (h.rope_center) o.key_rope_inv_freq = h.rope_inv_freq;
    o.key_rope_neox = h.rope_neox;
    KvCache cache(o);
    check_cache_file_matches(file, cache, h.owner);
    const SequenceId seq = restore_cache_sequence(cache, file);
    const size_t row = static_cast<size_t>(o.n_kv_heads) * o.head_dim;
    const size_t n = cache.length(seq, 0);
    std::vector<float> k((n + 1) * row), v((n + 1) * row);
    for (int l = 0; l < o.n_layers; ++l) {
      cache.read(seq, l, 0, n, k.data(), v.data());
      cache.append(seq, l, k.data(), v.data(), 1);
      cache.read(seq, l, 0, n + 1, k.data(), v.data());
    }
  } catch (const Error&) {
  }
  return 0;
}
