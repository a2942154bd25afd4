// Shared helpers of the cache file tests (cache_file_test.cpp, cache_file_rope_test.cpp): an
// owner, options and a filled cache to save, and the section offsets and checksums of a file's
// bytes for editing it.
#pragma once

#include <polarquant/error.h>
#include <polarquant/kv_cache.h>

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "cache/cache_file.h"
#include "cache_test_util.h"
#include "core/bytes.h"

namespace polarquant::testing {

inline CacheOwner owner_for(const KvCacheOptions& o) {
  CacheOwner w;
  w.architecture = "test/none";
  w.n_layers = static_cast<uint32_t>(o.n_layers);
  w.n_heads = static_cast<uint32_t>(2 * o.n_kv_heads);
  w.n_kv_heads = static_cast<uint32_t>(o.n_kv_heads);
  w.head_dim = static_cast<uint32_t>(o.head_dim);
  w.vocab_size = 100;
  w.model_hash = 0x1234abcdull;
  return w;
}

// A prompt of `prompt` tokens in one append, then `generated` appends of one token.
inline SequenceId fill(KvCache& cache, size_t prompt, size_t generated, uint64_t seed) {
  const KvCacheOptions& o = cache.options();
  const SequenceId seq = cache.add_sequence();
  const size_t row = static_cast<size_t>(o.n_kv_heads) * o.head_dim;
  for (int l = 0; l < o.n_layers; ++l) {
    const auto d = token_data(prompt + generated, o.n_kv_heads, o.head_dim, seed + l);
    cache.append(seq, l, d.k.data(), d.v.data(), prompt);
    for (size_t t = prompt; t < prompt + generated; ++t) {
      cache.append(seq, l, d.k.data() + t * row, d.v.data() + t * row, 1);
    }
  }
  return seq;
}

inline std::vector<int> ids(size_t n) {
  std::vector<int> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<int>(i * 7 % 100);
  return v;
}

inline KvCacheOptions options(const std::string& key, const std::string& value) {
  KvCacheOptions o;
  o.n_layers = 2;
  o.n_kv_heads = 2;
  o.head_dim = 64;
  o.key_codec = key;
  o.value_codec = value;
  o.sink_tokens = 4;
  o.recent_tokens = 8;
  o.center_keys = true;
  return o;
}

inline std::vector<float> read_all(const KvCache& cache, SequenceId seq, int layer) {
  const size_t n = cache.length(seq, layer);
  const size_t row = static_cast<size_t>(cache.options().n_kv_heads) * cache.options().head_dim;
  std::vector<float> k(n * row), v(n * row);
  cache.read(seq, layer, 0, n, k.data(), v.data());
  k.insert(k.end(), v.begin(), v.end());
  return k;
}

inline void expect_same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

// Rewrites the CRC-32C of the section that starts at `offset` (after editing its payload).
inline void fix_crc(std::vector<uint8_t>& bytes, size_t offset) {
  uint64_t length = 0;
  std::memcpy(&length, &bytes[offset + 4], 8);
  const uint32_t crc = crc32c(&bytes[offset], static_cast<size_t>(12 + length));
  std::memcpy(&bytes[offset + 12 + length], &crc, 4);
}
inline size_t section_offset(const std::vector<uint8_t>& bytes, int index) {
  size_t at = 12;
  for (int i = 0; i < index; ++i) {
    uint64_t length = 0;
    std::memcpy(&length, &bytes[at + 4], 8);
    at += 16 + length;
  }
  return at;
}

// The first error parsing, checking and restoring bytes into a cache of options o gives (empty:
// none).
inline std::string format_error(const std::vector<uint8_t>& bytes, const KvCacheOptions& o) {
  try {
    const CacheFile f = parse_cache_file(bytes.data(), bytes.size(), "bad.pqkv");
    KvCache c(o);
    check_cache_file_matches(f, c, owner_for(o));
    restore_cache_sequence(c, f);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace polarquant::testing
