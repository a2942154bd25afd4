// Checking a parsed cache file against the running model and cache, and restoring its sequence
// (the second half of src/cache/cache_file.h; the first, writing and parsing, is cache_file.cpp).
#include <polarquant/error.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cache/cache_file.h"
#include "cache/kv_cache_impl.h"
#include "core/bytes.h"

namespace polarquant {

namespace {

constexpr uint64_t kMaxTokens = 1ull << 31;

// How every refusal of a file written for other settings ends: what happened and what to do.
const char* const kNotLoaded =
    "; nothing was loaded and the file is unchanged: run with the settings it was written with, or "
    "give a new file name to compute the prompt again";

template <typename T>
void differ(const char* what, const T& in_file, const T& here, const std::string& where) {
  if (in_file == here) return;
  auto show = [](const auto& v) {
    if constexpr (std::is_same_v<std::decay_t<decltype(v)>, std::string>) {
      return "'" + v + "'";
    } else {
      return std::to_string(v);
    }
  };
  throw_invalid("cache file '" + where + "' was written for " + what + " " + show(in_file) +
                ", but this run has " + show(here) + kNotLoaded);
}

}  // namespace

void check_cache_file_matches(const CacheFile& file, const KvCache& cache,
                              const CacheOwner& owner) {
  const CacheFileHeader& f = file.header;
  const CacheFileHeader here = cache_file_header(cache, owner);
  const std::string& w = file.where;
  differ("model architecture", f.owner.architecture, here.owner.architecture, w);
  differ("a model with n_layers", f.owner.n_layers, here.owner.n_layers, w);
  differ("a model with n_heads", f.owner.n_heads, here.owner.n_heads, w);
  differ("a model with n_kv_heads", f.owner.n_kv_heads, here.owner.n_kv_heads, w);
  differ("a model with head_dim", f.owner.head_dim, here.owner.head_dim, w);
  differ("a model with vocab_size", f.owner.vocab_size, here.owner.vocab_size, w);
  differ("another model (hash of tokenizer, metadata and weights)", f.owner.model_hash,
         here.owner.model_hash, w);
  differ("key codec", f.key_codec, here.key_codec, w);
  differ("value codec", f.value_codec, here.value_codec, w);
  if (f.key_codebooks != here.key_codebooks || f.value_codebooks != here.value_codebooks) {
    throw_invalid("cache file '" + w +
                  "' was written with other angle codebooks (--key-codebooks / "
                  "--value-codebooks)" +
                  kNotLoaded);
  }
  differ("rotation seed", f.seed, here.seed, w);
  differ("page_tokens", f.page_tokens, here.page_tokens, w);
  differ("--sink", f.sink_tokens, here.sink_tokens, w);
  differ("--recent", f.recent_tokens, here.recent_tokens, w);
  differ("key centering (0: --no-center-keys)", int{f.center_keys}, int{here.center_keys}, w);
  if (f.version < 2 && here.rope_center) {
    throw_invalid("cache file '" + w + "' is of version " + std::to_string(f.version) +
                  ", which does not store RoPE-aware key centering (--rope-center); run without "
                  "it, or recreate the file with this build; nothing was loaded");
  }
  differ("RoPE-aware key centering (1: --rope-center)", int{f.rope_center}, int{here.rope_center},
         w);
  differ("RoPE pairs (1: neox, 0: interleaved)", int{f.rope_neox}, int{here.rope_neox}, w);
  // Layer by layer: one set for every layer equals per-layer sets that are all that set.
  const size_t half = here.owner.head_dim / 2, layers = here.owner.n_layers;
  auto form = [&](size_t n) {
    return std::to_string(n) + (n == half ? " (one set for every layer)" : " (one set per layer)");
  };
  for (const auto* freq : {&f.rope_inv_freq, &here.rope_inv_freq}) {
    if (!freq->empty() && freq->size() != half && freq->size() != layers * half) {
      throw_invalid("cache file '" + w + "' was written for " + form(f.rope_inv_freq.size()) +
                    " RoPE frequencies (key_rope_inv_freq), but this run has " +
                    form(here.rope_inv_freq.size()) + kNotLoaded);
    }
  }
  for (size_t l = 0; f.rope_center && here.rope_center && l < layers; ++l) {
    const float* a = f.rope_inv_freq.data() + (f.rope_inv_freq.size() > half ? l * half : 0);
    const float* b = here.rope_inv_freq.data() + (here.rope_inv_freq.size() > half ? l * half : 0);
    for (size_t i = 0; i < half; ++i) {
      if (std::memcmp(&a[i], &b[i], sizeof(float)) == 0) continue;
      char text[200];
      std::snprintf(
          text, sizeof text,
          "layer %zu's RoPE frequency %zu (key_rope_inv_freq) %.9g, but this run has %.9g", l, i,
          a[i], b[i]);
      const std::string counts = f.rope_inv_freq.size() == here.rope_inv_freq.size()
                                     ? std::string()
                                     : " (the file stores " + form(f.rope_inv_freq.size()) +
                                           " frequencies, this run " +
                                           form(here.rope_inv_freq.size()) + ")";
      throw_invalid("cache file '" + w + "' was written for " + text + counts + kNotLoaded);
    }
  }
  differ("quantize_generated (0: --fp16-generated)", int{f.quantize_generated},
         int{here.quantize_generated}, w);
  differ("page layout version", f.page_layout_version, here.page_layout_version, w);
  differ("key page region bytes", f.key_head_bytes, here.key_head_bytes, w);
  differ("value page region bytes", f.value_head_bytes, here.value_head_bytes, w);
}

namespace {

// Reads n full-precision rows (K then V) into rows, refusing non-finite values.
void read_rows(ByteReader& r, TokenRows& rows, size_t n, size_t row_floats, const char* what) {
  if (n == 0) return;
  const size_t floats = n * row_floats;
  std::vector<float> k(floats), v(floats);
  std::memcpy(k.data(), r.take(floats * sizeof(float), what), floats * sizeof(float));
  std::memcpy(v.data(), r.take(floats * sizeof(float), what), floats * sizeof(float));
  for (const auto* x : {&k, &v}) {
    for (float value : *x) {
      if (!std::isfinite(value)) r.fail(std::string("a ") + what + " value is not finite");
    }
  }
  rows.push(k.data(), v.data(), n);
}

// Reads n floats of a key mean (n already checked), refusing non-finite values.
void read_means(ByteReader& r, std::vector<float>& mean, uint32_t n, const char* field,
                const char* what) {
  if (n == 0) return;
  mean.resize(n);
  std::memcpy(mean.data(), r.take(n * sizeof(float), field), n * sizeof(float));
  for (float x : mean) {
    if (!std::isfinite(x)) r.fail(std::string(what) + " is not finite");
  }
}

// Decodes the filled slots of every page and refuses codes that decode to non-finite values.
void check_pages(const KvCache::Impl& m, const SequenceLayer& sl, ByteReader& r) {
  const size_t page_tokens = static_cast<size_t>(m.options.page_tokens);
  std::vector<float> out(page_tokens * static_cast<size_t>(m.options.head_dim));
  for (size_t p = 0; p < sl.pages; ++p) {
    const size_t n = std::min(page_tokens, sl.coded - p * page_tokens);
    for (int h = 0; h < m.options.n_kv_heads; ++h) {
      for (const bool key : {true, false}) {
        const PageFormat& format = key ? m.key_format_of(sl) : m.value_format_of(sl);
        const uint8_t* region = key ? m.key_region(sl, p, h) : m.value_region(sl, p, h);
        try {
          format.load(region, 0, n, out.data());
        } catch (const Error& e) {
          r.fail(std::string(key ? "key" : "value") + " page " + std::to_string(p) + ", head " +
                 std::to_string(h) + " does not decode: " + e.what());
        }
        for (size_t i = 0; i < n * static_cast<size_t>(m.options.head_dim); ++i) {
          if (!std::isfinite(out[i])) {
            r.fail(std::string(key ? "key" : "value") + " page " + std::to_string(p) + ", head " +
                   std::to_string(h) + " decodes to a non-finite value");
          }
        }
      }
    }
  }
}

}  // namespace

SequenceId restore_cache_sequence(KvCache& cache, const CacheFile& file) {
  // KvCache exposes its internals read-only; the cache itself is not const here, so adding the
  // restored sequence through them is well-defined.
  KvCache::Impl& m = const_cast<KvCache::Impl&>(cache.impl());
  const KvCacheOptions& o = m.options;
  if (file.layer_data.size() != static_cast<size_t>(o.n_layers)) {
    throw_invalid("restore_cache_sequence: the file has " + std::to_string(file.layer_data.size()) +
                  " layers, the cache " + std::to_string(o.n_layers) +
                  " (call check_cache_file_matches first)");
  }
  const uint64_t n_tokens = file.header.tokens.size();
  const size_t page_tokens = static_cast<size_t>(o.page_tokens);
  std::vector<SequenceLayer> layers(static_cast<size_t>(o.n_layers));
  for (int l = 0; l < o.n_layers; ++l) {
    SequenceLayer& sl = layers[l];
    sl.sink.init(m.row_floats, static_cast<size_t>(std::max(o.sink_tokens, 1)));
    sl.tail.init(m.row_floats, page_tokens);
    ByteReader r(file.layer_data[l], file.layer_size[l],
                 "cache file '" + file.where + "', layer " + std::to_string(l));
    if (r.u32("layer index") != static_cast<uint32_t>(l))
      r.fail("layer index is not " + std::to_string(l));
    uint64_t v[6];
    const char* names[6] = {"length", "prompt", "sink", "coded", "pages", "tail"};
    for (int i = 0; i < 6; ++i) {
      v[i] = r.u64(names[i]);
      if (v[i] > kMaxTokens) r.fail(std::string(names[i]) + " is out of range");
    }
    const auto [length, prompt, sink, coded, pages, tail] =
        std::tuple{v[0], v[1], v[2], v[3], v[4], v[5]};
    sl.length = length;
    sl.prompt = prompt;
    sl.started = length > 0;
    sl.coded = coded;
    const uint64_t want_mean = o.center_keys && sl.started ? m.row_floats : 0;
    const uint64_t want_pre = m.rope(l).enabled() && sl.started ? m.row_floats : 0;
    const uint32_t mean_floats = r.u32("key_mean floats");
    // The counts must be what appending `length` tokens (the first append `prompt` long) gives.
    const bool counts_ok =
        length == n_tokens && (length == 0 ? prompt == 0 : prompt >= 1) && prompt <= length &&
        sink == std::min<uint64_t>(length, o.sink_tokens) && sink + coded + tail == length &&
        pages == (coded + page_tokens - 1) / page_tokens && mean_floats == want_mean;
    if (!counts_ok) {
      r.fail("inconsistent counts: length " + std::to_string(length) + " (file tokens " +
             std::to_string(n_tokens) + "), prompt " + std::to_string(prompt) + ", sink " +
             std::to_string(sink) + ", coded " + std::to_string(coded) + ", pages " +
             std::to_string(pages) + ", tail " + std::to_string(tail) + ", key mean floats " +
             std::to_string(mean_floats));
    }
    read_means(r, sl.key_mean, mean_floats, "key_mean", "a key mean");
    // Version 2: the pre-RoPE mean (rope_center.h); version 1 files hold none.
    uint32_t pre_floats = 0;
    if (file.header.version >= 2) pre_floats = r.u32("key_mean_pre floats");
    if (pre_floats != want_pre) {
      r.fail("key_mean_pre floats " + std::to_string(pre_floats) + ", but " +
             (want_pre > 0 ? "this cache's RoPE-aware centering needs " + std::to_string(want_pre)
                           : std::string("the cache expects none here")) +
             (file.header.version < 2 ? " (a version 1 file holds none)" : ""));
    }
    read_means(r, sl.key_mean_pre, pre_floats, "key_mean_pre",
               "a pre-RoPE key mean (key_mean_pre)");
    const uint64_t page_bytes = m.key_page_bytes() + m.value_page_bytes();
    if (pages > 0 && page_bytes > file.layer_size[l] / pages) {
      r.fail(std::to_string(pages) + " pages do not fit in the layer section");
    }
    const uint64_t means =
        (file.header.version >= 2 ? 8 : 4) + (uint64_t{mean_floats} + pre_floats) * 4;
    const uint64_t expected =
        4 + 6 * 8 + means + 2 * (sink + tail) * m.row_floats * 4 + pages * page_bytes;
    if (expected != file.layer_size[l]) {
      r.fail("the layer section is " + std::to_string(file.layer_size[l]) +
             " bytes; its counts need " + std::to_string(expected));
    }
    read_rows(r, sl.sink, sink, m.row_floats, "sink row");
    for (uint64_t p = 0; p < pages; ++p) m.add_page(sl);
    for (const bool keys : {true, false}) {  // page by page, heads in order (cache_file.cpp)
      const size_t bytes = m.head_bytes(keys);
      for (uint64_t p = 0; p < pages; ++p) {
        for (int h = 0; h < o.n_kv_heads; ++h) {
          std::memcpy(const_cast<uint8_t*>(m.region(sl, keys, p, h)), r.take(bytes, "page"), bytes);
        }
      }
    }
    read_rows(r, sl.tail, tail, m.row_floats, "tail row");
    if (m.codable(sl) != coded) {
      r.fail("coded " + std::to_string(coded) +
             " is not what the cache's windows and groups give (" + std::to_string(m.codable(sl)) +
             ")");
    }
    check_pages(m, sl, r);
  }
  // The page tables PageScoreShift and read() use (the appends that built these pages covered them
  // in the writing process, not here); layers sharing a frequency set share a table.
  for (int l = 0; l < o.n_layers; ++l) {
    if (m.rope(l).enabled()) m.rope(l).cover(layers[l].pages);
  }
  const SequenceId id = m.next_id++;
  m.sequences.emplace(id, std::move(layers));
  return id;
}

}  // namespace polarquant
