// KvCache internals, shared by the cache (src/cache) and the attention kernels (src/attention).
//
// Per sequence and layer, positions are split into three runs:
//   [0, sink)              full precision (the first sink_tokens tokens),
//   [sink, sink + coded)   quantized, in pages of page_tokens slots (slot i of page p holds
//                          position sink + p * page_tokens + i),
//   [sink + coded, length) full precision: the recent window, a partial codec group, and (with
//                          quantize_generated = false) the generated tokens.
// Pages live in slabs that grow with the sequence: kSlabsPerSize slabs of 1 page, then as many of
// 2, 4, 8 and 16 pages, then slabs of kMaxSlabPages (32) pages: 1 x 8, 2 x 8, ..., 16 x 8 (248
// pages, 7,936 tokens at 32 per page), then 32, 32, .... Inside a slab the regions are head-major:
// for each KV head h, the regions of h of the slab's pages one after another, so one head's pages
// of a slab form one contiguous stream (hardware prefetchers and the TLB follow it; separate page
// allocations cut the stream at every page). A new slab is at most 1/kSlabsPerSize of the pages
// allocated before it, so unused pages are under 12.5% of a sequence's pages at every length (1
// page for a 1-page sequence; doubling every slab would leave up to half of them unused).
// Every access to a page's bytes goes through KvCache::Impl::region().
//
// Tokens move from the third run to the second as soon as they may be quantized, so both boundaries
// only grow and the stored codes depend only on the token values and the sequence length.
#pragma once

#include <polarquant/kv_cache.h>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "cache/page_format.h"
#include "cache/rope_center.h"

namespace polarquant {

struct AlignedDeleter {
  void operator()(uint8_t* p) const;
};
using PageBuffer = std::unique_ptr<uint8_t[], AlignedDeleter>;
PageBuffer allocate_slab(size_t bytes);  // zero-filled, kPageAlignment-aligned

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

// Slab geometry. Fixed slabs of 32 pages were measured faster than one allocation per page
// (docs/BENCHMARKS.md section 2.7: `paper` -6..-12%, f16 -25% at 32k, one thread) but made a short
// sequence hold 32 pages per layer; growing slabs keep the long stream and the small footprint
// (section 2.8).
inline constexpr size_t kMaxSlabPages = 32;  // a power of two
// Slabs of each size below kMaxSlabPages (the bound on unused pages above).
inline constexpr size_t kSlabsPerSize = 8;
// Size classes below kMaxSlabPages (1, 2, 4, 8, 16 pages), and the slabs and pages they hold.
inline constexpr size_t kGrowingClasses = std::bit_width(kMaxSlabPages) - 1;
inline constexpr size_t kGrowingSlabs = kSlabsPerSize * kGrowingClasses;
inline constexpr size_t kGrowingPages = kSlabsPerSize * (kMaxSlabPages - 1);
static_assert(std::has_single_bit(kMaxSlabPages));

// Pages slab `slab` holds.
inline constexpr size_t slab_pages(size_t slab) {
  return slab < kGrowingSlabs ? size_t{1} << (slab / kSlabsPerSize) : kMaxSlabPages;
}
// The first page of slab `slab`: also the pages slabs 0 .. slab - 1 hold together. Class c
// (slabs of 2^c pages) starts at page kSlabsPerSize * (2^c - 1).
inline constexpr size_t slab_first_page(size_t slab) {
  if (slab >= kGrowingSlabs) return kGrowingPages + (slab - kGrowingSlabs) * kMaxSlabPages;
  const size_t c = slab / kSlabsPerSize;
  return kSlabsPerSize * ((size_t{1} << c) - 1) + (slab % kSlabsPerSize) * (size_t{1} << c);
}
// Where page `page` lives: the `index`-th page of slab `slab`, which holds `pages` pages.
struct SlabSpot {
  size_t slab, index, pages;
};
inline constexpr SlabSpot slab_spot(size_t page) {
  if (page < kGrowingPages) {
    // Class c holds pages [S (2^c - 1), S (2^(c+1) - 1)), i.e. floor(page / S) + 1 in [2^c,
    // 2^(c+1)).
    const size_t c = static_cast<size_t>(std::bit_width(page / kSlabsPerSize + 1)) - 1;
    const size_t in_class = page - kSlabsPerSize * ((size_t{1} << c) - 1);
    return {kSlabsPerSize * c + (in_class >> c), in_class & ((size_t{1} << c) - 1), size_t{1} << c};
  }
  const size_t later = page - kGrowingPages;
  return {kGrowingSlabs + later / kMaxSlabPages, later % kMaxSlabPages, kMaxSlabPages};
}

struct SequenceLayer {
  size_t length = 0;
  size_t prompt =
      0;  // tokens of the first append (quantize_generated = false quantizes only those)
  bool started = false;
  TokenRows sink;    // positions [0, sink.size())
  size_t coded = 0;  // quantized positions
  size_t pages = 0;  // pages in use (the last may be partly filled)
  // Slab s holds slab_pages(s) pages, head-major; K and V have the same slabs.
  std::vector<PageBuffer> k_slabs, v_slabs;
  TokenRows tail;               // positions [sink + coded, length)
  std::vector<float> key_mean;  // center_keys: subtracted from every stored key (row_floats)
  // key_rope_inv_freq: the first append's mean before RoPE (row_floats; rope_center.h).
  std::vector<float> key_mean_pre;
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
  // key_rope_inv_freq: the distinct frequency sets (one, or Gemma 3's two; a disabled one when
  // empty) and each layer's index into them (make_rope_centers).
  std::vector<RopeCenter> ropes;
  std::vector<size_t> layer_rope;
  size_t row_floats = 0;
  SequenceId next_id = 0;
  std::map<SequenceId, std::vector<SequenceLayer>> sequences;

  // Layer `layer`'s RoPE-aware centering (disabled when key_rope_inv_freq is empty). cover() on
  // it is not thread-safe: layers sharing a set share its page table.
  const RopeCenter& rope(int layer) const { return ropes[layer_rope[static_cast<size_t>(layer)]]; }
  RopeCenter& rope(int layer) { return ropes[layer_rope[static_cast<size_t>(layer)]]; }

  // The formats a sequence-layer's pages are written in (its own with online codebooks).
  const PageFormat& key_format_of(const SequenceLayer& sl) const {
    return sl.key_format ? *sl.key_format : *key_format;
  }
  const PageFormat& value_format_of(const SequenceLayer& sl) const {
    return sl.value_format ? *sl.value_format : *value_format;
  }
  size_t key_page_bytes() const { return key_format->head_bytes() * options.n_kv_heads; }
  size_t value_page_bytes() const { return value_format->head_bytes() * options.n_kv_heads; }
  size_t head_bytes(bool keys) const {
    return keys ? key_format->head_bytes() : value_format->head_bytes();
  }
  // The one map from a page to its bytes: head `head`'s region of page `page`, in the K slabs
  // (keys) or the V slabs. Regions of one head's pages of a slab follow one another.
  const uint8_t* region(const SequenceLayer& sl, bool keys, size_t page, int head) const {
    const SlabSpot at = slab_spot(page);
    const auto& slabs = keys ? sl.k_slabs : sl.v_slabs;
    return slabs[at.slab].get() +
           (static_cast<size_t>(head) * at.pages + at.index) * head_bytes(keys);
  }
  const uint8_t* key_region(const SequenceLayer& sl, size_t page, int head) const {
    return region(sl, true, page, head);
  }
  const uint8_t* value_region(const SequenceLayer& sl, size_t page, int head) const {
    return region(sl, false, page, head);
  }
  // Bytes from one head's region of `page` to the next head's (PageFormat::store's head_stride).
  size_t head_stride(bool keys, size_t page) const {
    return slab_spot(page).pages * head_bytes(keys);
  }
  // Pages the allocated slabs hold (at least sl.pages; K and V slabs hold the same pages).
  static size_t allocated_pages(const SequenceLayer& sl) {
    return slab_first_page(sl.k_slabs.size());
  }
  // Adds page sl.pages (zero-filled), allocating the next K and V slabs when the last are full.
  void add_page(SequenceLayer& sl) const;
  // Throws State for an unknown or freed sequence and InvalidArgument for a layer out of range.
  const SequenceLayer& layer(SequenceId seq, int layer, const char* caller) const;
  SequenceLayer& layer(SequenceId seq, int layer, const char* caller);
  // Positions [sink, limit) that may be quantized now, in whole groups.
  size_t codable(const SequenceLayer& sl) const;
};

}  // namespace polarquant
