// KvCache internals, shared by the cache (src/cache) and the attention kernels (src/attention).
//
// Per sequence and layer, positions are split into three runs:
//   [0, sink)              full precision (the first sink_tokens tokens),
//   [sink, sink + coded)   quantized, in pages of page_tokens slots (slot i of page p holds
//                          position sink + p * page_tokens + i),
//   [sink + coded, length) full precision: the recent window, a partial codec group, and (with
//                          quantize_generated = false) the generated tokens.
// Pages live in slabs of kSlabPages pages: slab s holds, for each KV head h, the regions of pages
// s*kSlabPages .. s*kSlabPages + kSlabPages - 1 of that head, one after another, so one head's
// pages form one contiguous stream of kSlabPages regions (hardware prefetchers follow it; separate
// page allocations cut the stream at every page).
//
// Tokens move from the third run to the second as soon as they may be quantized, so both boundaries
// only grow and the stored codes depend only on the token values and the sequence length.
#pragma once

#include <polarquant/kv_cache.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "cache/page_format.h"

namespace polarquant {

struct AlignedDeleter {
  void operator()(uint8_t* p) const;
};
using PageBuffer = std::unique_ptr<uint8_t[], AlignedDeleter>;
PageBuffer allocate_page(size_t bytes);  // zero-filled, kPageAlignment-aligned

// Full-precision K and V rows (token-major, n_kv_heads x head_dim floats per token) with a movable
// start, so dropping the oldest rows is O(1). Capacity grows in steps of `step` tokens and is exact
// (no hidden growth factor), which keeps the memory accounting exact.
class TokenRows {
 public:
  void init(size_t row_floats, size_t step) {
    row_floats_ = row_floats;
    step_ = step;
  }
  size_t size() const { return count_; }
  size_t capacity() const { return capacity_; }
  size_t bytes() const { return 2 * capacity_ * row_floats_ * sizeof(float); }
  const float* k(size_t i) const { return k_.get() + (begin_ + i) * row_floats_; }
  const float* v(size_t i) const { return v_.get() + (begin_ + i) * row_floats_; }
  void push(const float* k, const float* v, size_t n);
  void drop_front(size_t n);
  // Releases capacity beyond the live rows rounded up to `step` (after a bulk append moved most of
  // its rows into pages, the peak would otherwise stay allocated).
  void shrink();
  void clear();

 private:
  size_t row_floats_ = 0, step_ = 1;
  size_t begin_ = 0, count_ = 0, capacity_ = 0;
  std::unique_ptr<float[]> k_, v_;
};

// One page per slab: slabs of 8 pages measured no faster (docs/design/cache.md) and made a short
// sequence hold up to 8 pages per layer, more than an fp16 cache of the same tokens. The slab
// mechanism stays so that a larger value can be measured again.
inline constexpr size_t kSlabPages = 1;

struct SequenceLayer {
  size_t length = 0;
  size_t prompt =
      0;  // tokens of the first append (quantize_generated = false quantizes only those)
  bool started = false;
  TokenRows sink;    // positions [0, sink.size())
  size_t coded = 0;  // quantized positions
  size_t pages = 0;  // pages in use (the last may be partly filled)
  std::vector<PageBuffer> k_slabs, v_slabs;
  TokenRows tail;               // positions [sink + coded, length)
  std::vector<float> key_mean;  // center_keys: subtracted from every stored key (row_floats)
  // online_codebooks: this sequence's and layer's codecs, fitted at its first append (null: the
  // cache's codec for that side). Same configuration as the cache's but for the angle codebooks,
  // so page sizes and layouts are the cache's.
  std::unique_ptr<Codec> key_codec, value_codec;
  std::unique_ptr<PageFormat> key_format, value_format;
};

// online_codebooks: `base` with each level's codebook refined (refine_codebook, warm-started from
// base's) on a seeded subsample of the angles of rows x (n_rows x dim, unrotated; at most
// kOnlineSamples angles per level). A level with fewer than kOnlineMinSamplesPerCell angles per
// codebook entry keeps base's codebook. Deterministic for given rows and seed.
inline constexpr size_t kOnlineSamples = 4096;
inline constexpr size_t kOnlineMinSamplesPerCell = 4;
inline constexpr int kOnlineIterations = 8;
std::unique_ptr<PolarCodec> fit_online_codec(const PolarCodec& base, const float* x, size_t n_rows,
                                             uint64_t seed);

struct KvCache::Impl {
  KvCacheOptions options;
  std::unique_ptr<Codec> key_codec, value_codec;
  std::unique_ptr<PageFormat> key_format, value_format;
  int group = 1;  // tokens quantized together: the lcm of the two codecs' group sizes
  size_t row_floats = 0;
  SequenceId next_id = 0;
  std::map<SequenceId, std::vector<SequenceLayer>> sequences;

  // The formats a sequence-layer's pages are written in (its own with online codebooks).
  const PageFormat& key_format_of(const SequenceLayer& sl) const {
    return sl.key_format ? *sl.key_format : *key_format;
  }
  const PageFormat& value_format_of(const SequenceLayer& sl) const {
    return sl.value_format ? *sl.value_format : *value_format;
  }
  size_t key_page_bytes() const { return key_format->head_bytes() * options.n_kv_heads; }
  size_t value_page_bytes() const { return value_format->head_bytes() * options.n_kv_heads; }
  size_t key_slab_bytes() const { return key_page_bytes() * kSlabPages; }
  size_t value_slab_bytes() const { return value_page_bytes() * kSlabPages; }
  // The head region of one page (regions of one head's pages are kSlabPages-contiguous).
  const uint8_t* key_region(const SequenceLayer& sl, size_t page, int head) const {
    return sl.k_slabs[page / kSlabPages].get() +
           (static_cast<size_t>(head) * kSlabPages + page % kSlabPages) * key_format->head_bytes();
  }
  const uint8_t* value_region(const SequenceLayer& sl, size_t page, int head) const {
    return sl.v_slabs[page / kSlabPages].get() +
           (static_cast<size_t>(head) * kSlabPages + page % kSlabPages) *
               value_format->head_bytes();
  }
  // Throws State for an unknown or freed sequence and InvalidArgument for a layer out of range.
  const SequenceLayer& layer(SequenceId seq, int layer, const char* caller) const;
  SequenceLayer& layer(SequenceId seq, int layer, const char* caller);
  // Positions [sink, limit) that may be quantized now, in whole groups.
  size_t codable(const SequenceLayer& sl) const;
};

}  // namespace polarquant
