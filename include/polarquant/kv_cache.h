// A paged, quantized KV cache for n_layers x n_kv_heads x head_dim, holding many sequences.
//
// Tokens are appended per layer, in bulk (prefill) or one at a time (decode); appending in one call
// or token by token gives identical stored codes. Keys and values each have their own codec, chosen
// by name (see make_codec). Optional full-precision windows keep the first `sink_tokens` and the
// most recent `recent_tokens` of each sequence unquantized. Page layout: docs/FORMAT.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <polarquant/codec.h>

namespace polarquant {

struct KvCacheOptions {
  int n_layers = 1;
  int n_kv_heads = 1;
  int head_dim = 128;
  std::string key_codec = "paper";  // any make_codec name, e.g. "f16", "f32", "paper"
  std::string value_codec = "paper";
  // PolarQuant angle codebooks from a PQCB file (train-codebooks, docs/FORMAT.md) instead of the
  // analytic ones: the paper's "offline" codebooks. Empty: analytic. The file's levels and bits
  // must match the codec's; a non-PolarQuant codec with a file throws InvalidArgument.
  std::string key_codebooks;
  std::string value_codebooks;
  // The paper's "online" codebooks: the first append of each sequence to each layer fits that
  // sequence-layer's angle codebooks, keys and values separately (each side whose codec is a
  // PolarQuant one), to the appended rows (after key centering), and every page of that
  // sequence-layer is encoded with them. The fit is Lloyd on a seeded subsample of at most 4096
  // angles per level, warm-started from the analytic codebooks (8 iterations; a level with fewer
  // than 4 angles per codebook entry keeps the analytic one): deterministic, and a few percent of
  // the prefill time. A runtime that prefills in chunks fits on its first chunk. Needs a PolarQuant
  // key or value codec and no codebook file; otherwise the constructor throws InvalidArgument.
  // Cache files (src/cache/cache_file.h) refuse it.
  bool online_codebooks = false;
  uint64_t seed = kDefaultSeed;  // rotation seed shared by keys and values of all layers/heads
  int page_tokens = 32;          // tokens per page
  int sink_tokens = 0;           // first S tokens of a sequence kept in full precision
  int recent_tokens = 0;         // most recent R tokens kept in full precision
  // false reproduces the paper's setting: tokens appended after the first append of a sequence
  // (i.e. generated tokens) stay in full precision.
  bool quantize_generated = true;
  // Store keys minus their mean over the first append of each sequence and layer (per KV head). A
  // score then changes by q.mean, the same for every token of a query, so softmax attention is
  // unchanged exactly, while the codec sees vectors of smaller norm: real keys carry a large
  // per-channel offset (SmolLM2: 1.4-4x of their energy), and a codec's error scales with the norm.
  // read() adds the mean back. Costs n_kv_heads x head_dim floats per sequence and layer.
  bool center_keys = false;
  // With center_keys, the model's RoPE frequencies (pair i is coordinates 2i, 2i + 1, or i,
  // i + head_dim / 2 with key_rope_neox): keys are stored after RoPE, which makes a constant
  // pre-RoPE bias rotate with the position, so one mean fits later tokens less and less. The cache
  // then also keeps the first append's mean before RoPE and stores each page's keys minus that
  // mean rotated to the page's middle, on the pairs turning less than 2 radians within a page;
  // attention adds the per-page difference back (exact). Either head_dim / 2 values, one set for
  // every layer, or n_layers x head_dim / 2, layer-major, one set per layer (Gemma 3's local and
  // global layers use two RoPE bases); another count throws InvalidArgument. Empty: one mean.
  // Cache files (version 2, per-layer sets since version 3) store the frequencies and the
  // pre-RoPE means.
  std::vector<float> key_rope_inv_freq;
  bool key_rope_neox = false;
};

using SequenceId = int64_t;

struct KvMemoryStats {
  std::vector<size_t> layer_bytes;  // bytes allocated per layer (pages, windows, tables)
  size_t total_bytes = 0;
  size_t fp16_bytes = 0;  // what an fp16 cache of the same tokens would need
  size_t tokens = 0;      // tokens stored, summed over sequences (per layer)
};

class KvCache {
 public:
  explicit KvCache(const KvCacheOptions& options);
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  const KvCacheOptions& options() const;

  SequenceId add_sequence();
  // Frees the sequence's pages; later use of the id throws State.
  void free_sequence(SequenceId seq);
  bool has_sequence(SequenceId seq) const;

  // Appends n_tokens tokens to one layer of a sequence. k and v hold n_tokens x n_kv_heads x
  // head_dim floats (token-major). Throws InvalidArgument for non-finite values.
  void append(SequenceId seq, int layer, const float* k, const float* v, size_t n_tokens);
  // Tokens stored for the sequence at that layer.
  size_t length(SequenceId seq, int layer) const;

  // Reconstructs the stored keys and values of tokens [begin, end) of one layer (for tests, for the
  // decode-then-attend reference, and for codecs without a fused path): n x n_kv_heads x head_dim.
  void read(SequenceId seq, int layer, size_t begin, size_t end, float* k, float* v) const;

  KvMemoryStats memory() const;

  struct Impl;
  const Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace polarquant
