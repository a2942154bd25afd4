// Saving one sequence of a KvCache to a file and restoring it exactly (docs/FORMAT.md section 7):
// the pages' head regions are written byte for byte as in memory, page by page whatever slabs hold
// them, so a PolarQuant cache is about 4x smaller on disk than an fp16 one, and a restored
// sequence continues bit for bit as the original would have.
//
// The file names its owner (model architecture, shapes and a hash of the model, see
// model::cache_owner) and every cache setting that changes the stored bytes (codecs and their
// codebooks, rotation seed, page size, windows, key centering and its RoPE frequencies,
// quantize_generated). Each section carries a CRC-32C. Reading never trusts a count before checking
// it against the bytes present, and restoring validates every layer before the cache is touched: a
// refused file loads nothing.
#pragma once

#include <polarquant/kv_cache.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace polarquant {

// Version 2 added RoPE-aware key centering (the header's frequencies, each layer's key_mean_pre);
// version 3 lets the frequencies be one set per layer (n_layers x head_dim / 2, Gemma 3's two
// RoPE bases), otherwise the same bytes. Versions 1 and 2 are still read (version 1 as caches
// without RoPE-aware centering).
inline constexpr uint32_t kCacheFileVersion = 3;

// Who the cached keys and values belong to. A reader refuses a file whose owner differs.
struct CacheOwner {
  std::string architecture;  // e.g. "llama/gguf"
  uint32_t n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, vocab_size = 0;
  uint64_t model_hash = 0;
};

struct CacheFileHeader {
  uint32_t version = kCacheFileVersion;
  CacheOwner owner;
  std::string key_codec, value_codec;
  // The codecs' angle codebooks (a PQCB file's bytes, docs/FORMAT.md section 3); empty: analytic
  // or not a PolarQuant codec.
  std::vector<uint8_t> key_codebooks, value_codebooks;
  uint64_t seed = 0;
  uint32_t page_tokens = 0, sink_tokens = 0, recent_tokens = 0;
  bool center_keys = false, quantize_generated = true;
  uint32_t page_layout_version = 0;
  uint32_t key_head_bytes = 0, value_head_bytes = 0;  // one head's page region
  // RoPE-aware key centering (KvCacheOptions::key_rope_inv_freq, key_rope_neox; version 2): on
  // when rope_inv_freq holds head_dim / 2 frequencies, or n_layers x head_dim / 2 (one set per
  // layer, layer-major; version 3); rope_neox is false when off.
  bool rope_center = false, rope_neox = false;
  std::vector<float> rope_inv_freq;
  std::vector<int32_t> tokens;  // the tokens the sequence holds, in order
  std::vector<float> logits;    // the model's logits after the last token (may be empty)
};

// A file whose header, tokens and section checksums have been checked; the layer sections are
// views into the caller's bytes, validated by restore_cache_sequence.
struct CacheFile {
  CacheFileHeader header;
  std::vector<const uint8_t*> layer_data;
  std::vector<size_t> layer_size;
  std::string where;  // the file name, for messages
};

// The header a save of `cache` would write (everything but the tokens and logits).
CacheFileHeader cache_file_header(const KvCache& cache, const CacheOwner& owner);

// The bytes of a cache file holding sequence `seq`. tokens must have one id per stored position.
std::vector<uint8_t> serialize_cache_sequence(const KvCache& cache, SequenceId seq,
                                              const CacheOwner& owner,
                                              const std::vector<int>& tokens,
                                              const std::vector<float>& logits);
// serialize_cache_sequence written to PATH.tmp, synced and renamed to path.
void save_cache_file(const std::string& path, const KvCache& cache, SequenceId seq,
                     const CacheOwner& owner, const std::vector<int>& tokens,
                     const std::vector<float>& logits);

// Parses the file structure: magic, version, header fields' ranges, section tags, lengths and
// CRC-32Cs. Throws Format naming `where`, the field and the byte offset.
CacheFile parse_cache_file(const uint8_t* data, size_t size, const std::string& where);

// Throws InvalidArgument naming the first difference (the file's value and this run's) when the
// file was written for another model or another cache configuration.
void check_cache_file_matches(const CacheFile& file, const KvCache& cache, const CacheOwner& owner);

// Adds a sequence holding the file's keys and values and returns its id. Every layer is checked
// first (lengths consistent with the cache's rules, finite full-precision rows and key means, pages
// that decode to finite values); on any error it throws Format and the cache is left unchanged.
// With RoPE-aware centering it extends the cache's page table (RopeCenter::cover) to the restored
// pages. Call check_cache_file_matches first.
SequenceId restore_cache_sequence(KvCache& cache, const CacheFile& file);

}  // namespace polarquant
