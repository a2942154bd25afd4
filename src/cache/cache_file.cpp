#include "cache/cache_file.h"

#include <polarquant/error.h>
#include <polarquant/polar_codec.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <type_traits>

#include "cache/kv_cache_impl.h"
#include "core/bytes.h"

namespace polarquant {

namespace {

constexpr char kMagic[8] = {'P', 'Q', 'K', 'V', 'C', 'A', 'C', 'H'};
constexpr uint32_t kTagHeader = 0x44414548u;  // "HEAD"
constexpr uint32_t kTagTokens = 0x534b4f54u;  // "TOKS"
constexpr uint32_t kTagLayer = 0x5259414cu;   // "LAYR"
constexpr size_t kMaxName = 256;
constexpr size_t kMaxCodebookBytes = 1 << 20;
constexpr uint64_t kMaxTokens = 1ull << 31;

std::vector<uint8_t> codebook_bytes(const Codec& codec) {
  const auto* polar = dynamic_cast<const PolarCodec*>(&codec);
  if (polar == nullptr || polar->config().codebooks.empty()) return {};
  return serialize_codebooks(polar->config().codebooks);
}

// Appends a section: u32 tag, u64 payload length, payload, u32 CRC-32C of all three.
void put_section(ByteWriter& out, uint32_t tag, ByteWriter& payload) {
  const size_t start = out.bytes().size();
  out.u32(tag);
  out.u64(payload.bytes().size());
  out.raw(payload.bytes().data(), payload.bytes().size());
  out.u32(crc32c(out.bytes().data() + start, out.bytes().size() - start));
}

void put_rows(ByteWriter& w, const TokenRows& rows, size_t row_floats) {
  for (size_t i = 0; i < rows.size(); ++i) w.raw(rows.k(i), row_floats * sizeof(float));
  for (size_t i = 0; i < rows.size(); ++i) w.raw(rows.v(i), row_floats * sizeof(float));
}

// Reads the next section, checks its tag and checksum, and returns a reader over its payload.
ByteReader take_section(ByteReader& r, uint32_t tag, const std::string& name) {
  const uint8_t* start = r.take(0, name.c_str());
  const size_t at = r.position();
  const uint32_t got = r.u32("section tag");
  if (got != tag) {
    char want[5] = {}, seen[5] = {};
    std::memcpy(want, &tag, 4);
    std::memcpy(seen, &got, 4);
    for (char& c : seen) c = (c != 0 && (c < 32 || c > 126)) ? '?' : c;
    r.fail("expected section '" + std::string(want) + "' (" + name + "), found '" + seen + "'");
  }
  const uint64_t length = r.u64("section length");
  if (length > r.remaining()) {
    r.fail("truncated: section " + name + " says " + std::to_string(length) + " bytes but only " +
           std::to_string(r.remaining()) + " remain");
  }
  const uint8_t* payload = r.take(static_cast<size_t>(length), name.c_str());
  const uint32_t stored = r.u32("section checksum");
  const uint32_t computed = crc32c(start, static_cast<size_t>(12 + length));
  if (stored != computed) {
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION  // the fuzzer cannot forge checksums
    throw_format(r.where() + ": section " + name + " (at byte offset " + std::to_string(at) +
                 ") is corrupt: CRC-32C " + std::to_string(computed) + " but the file stores " +
                 std::to_string(stored));
#endif
  }
  return ByteReader(payload, static_cast<size_t>(length), r.where() + ", section " + name);
}

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
                ", but this run has " + show(here) + "; nothing was loaded");
}

}  // namespace

CacheFileHeader cache_file_header(const KvCache& cache, const CacheOwner& owner) {
  const KvCache::Impl& m = cache.impl();
  const KvCacheOptions& o = m.options;
  CacheFileHeader h;
  h.owner = owner;
  h.key_codec = o.key_codec;
  h.value_codec = o.value_codec;
  h.key_codebooks = codebook_bytes(*m.key_codec);
  h.value_codebooks = codebook_bytes(*m.value_codec);
  h.seed = o.seed;
  h.page_tokens = static_cast<uint32_t>(o.page_tokens);
  h.sink_tokens = static_cast<uint32_t>(o.sink_tokens);
  h.recent_tokens = static_cast<uint32_t>(o.recent_tokens);
  h.center_keys = o.center_keys;
  h.quantize_generated = o.quantize_generated;
  h.page_layout_version = kPageLayoutVersion;
  h.key_head_bytes = static_cast<uint32_t>(m.key_format->head_bytes());
  h.value_head_bytes = static_cast<uint32_t>(m.value_format->head_bytes());
  return h;
}

std::vector<uint8_t> serialize_cache_sequence(const KvCache& cache, SequenceId seq,
                                              const CacheOwner& owner,
                                              const std::vector<int>& tokens,
                                              const std::vector<float>& logits) {
  const KvCache::Impl& m = cache.impl();
  if (static_cast<int>(owner.n_layers) != m.options.n_layers ||
      static_cast<int>(owner.n_kv_heads) != m.options.n_kv_heads ||
      static_cast<int>(owner.head_dim) != m.options.head_dim) {
    throw_invalid("save_cache_file: the owner's shape does not match the cache's");
  }
  for (int l = 0; l < m.options.n_layers; ++l) {
    if (m.layer(seq, l, "save_cache_file").length != tokens.size()) {
      throw_invalid("save_cache_file: " + std::to_string(tokens.size()) + " token ids for a " +
                    std::to_string(m.layer(seq, l, "save_cache_file").length) +
                    "-token sequence (layer " + std::to_string(l) + ")");
    }
  }
  const CacheFileHeader h = cache_file_header(cache, owner);
  ByteWriter out;
  out.raw(kMagic, sizeof kMagic);
  out.u32(kCacheFileVersion);
  ByteWriter w;
  w.str(h.owner.architecture);
  for (uint32_t v : {h.owner.n_layers, h.owner.n_heads, h.owner.n_kv_heads, h.owner.head_dim,
                     h.owner.vocab_size}) {
    w.u32(v);
  }
  w.u64(h.owner.model_hash);
  w.str(h.key_codec);
  w.str(h.value_codec);
  for (const auto* books : {&h.key_codebooks, &h.value_codebooks}) {
    w.u32(static_cast<uint32_t>(books->size()));
    w.raw(books->data(), books->size());
  }
  w.u64(h.seed);
  for (uint32_t v : {h.page_tokens, h.sink_tokens, h.recent_tokens}) w.u32(v);
  w.u8(h.center_keys);
  w.u8(h.quantize_generated);
  for (uint32_t v : {h.page_layout_version, h.key_head_bytes, h.value_head_bytes}) w.u32(v);
  put_section(out, kTagHeader, w);

  ByteWriter t;
  t.u32(static_cast<uint32_t>(tokens.size()));
  for (int id : tokens) t.u32(static_cast<uint32_t>(id));
  t.u32(static_cast<uint32_t>(logits.size()));
  for (float x : logits) t.f32(x);
  put_section(out, kTagTokens, t);

  for (int l = 0; l < m.options.n_layers; ++l) {
    const SequenceLayer& sl = m.layer(seq, l, "save_cache_file");
    ByteWriter p;
    p.u32(static_cast<uint32_t>(l));
    for (size_t v : {sl.length, sl.prompt, sl.sink.size(), sl.coded, sl.pages, sl.tail.size()}) {
      p.u64(v);
    }
    p.u32(static_cast<uint32_t>(sl.key_mean.size()));
    p.raw(sl.key_mean.data(), sl.key_mean.size() * sizeof(float));
    put_rows(p, sl.sink, m.row_floats);
    for (const auto& slab : sl.k_slabs) p.raw(slab.get(), m.key_slab_bytes());
    for (const auto& slab : sl.v_slabs) p.raw(slab.get(), m.value_slab_bytes());
    put_rows(p, sl.tail, m.row_floats);
    put_section(out, kTagLayer, p);
  }
  return std::move(out.bytes());
}

void save_cache_file(const std::string& path, const KvCache& cache, SequenceId seq,
                     const CacheOwner& owner, const std::vector<int>& tokens,
                     const std::vector<float>& logits) {
  write_file_bytes(path, serialize_cache_sequence(cache, seq, owner, tokens, logits));
}

CacheFile parse_cache_file(const uint8_t* data, size_t size, const std::string& where) {
  CacheFile f;
  f.where = where;
  ByteReader r(data, size, "cache file '" + where + "'");
  if (std::memcmp(r.take(8, "magic"), kMagic, 8) != 0) {
    throw_format("'" + where + "' is not a polarquant cache file (magic is not PQKVCACH)");
  }
  CacheFileHeader& h = f.header;
  h.version = r.u32("version");
  if (h.version != kCacheFileVersion) {
    throw_format("cache file '" + where + "' has version " + std::to_string(h.version) +
                 "; this build reads version " + std::to_string(kCacheFileVersion));
  }
  ByteReader hr = take_section(r, kTagHeader, "HEAD");
  h.owner.architecture = hr.str("architecture", kMaxName);
  uint32_t* shape[] = {&h.owner.n_layers, &h.owner.n_heads, &h.owner.n_kv_heads, &h.owner.head_dim,
                       &h.owner.vocab_size};
  const char* shape_names[] = {"n_layers", "n_heads", "n_kv_heads", "head_dim", "vocab_size"};
  const uint32_t shape_max[] = {4096, 65536, 4096, 65536, 1u << 24};
  for (int i = 0; i < 5; ++i) {
    *shape[i] = hr.u32(shape_names[i]);
    if (*shape[i] == 0 || *shape[i] > shape_max[i]) {
      hr.fail(std::string(shape_names[i]) + " = " + std::to_string(*shape[i]) + " is outside 1.." +
              std::to_string(shape_max[i]));
    }
  }
  h.owner.model_hash = hr.u64("model_hash");
  h.key_codec = hr.str("key_codec", kMaxName);
  h.value_codec = hr.str("value_codec", kMaxName);
  for (auto* books : {&h.key_codebooks, &h.value_codebooks}) {
    const uint32_t n = hr.u32("codebook_bytes");
    if (n > kMaxCodebookBytes) hr.fail("codebook_bytes " + std::to_string(n) + " is too large");
    const uint8_t* p = hr.take(n, "codebooks");
    books->assign(p, p + n);
  }
  h.seed = hr.u64("seed");
  h.page_tokens = hr.u32("page_tokens");
  h.sink_tokens = hr.u32("sink_tokens");
  h.recent_tokens = hr.u32("recent_tokens");
  const uint8_t center = hr.u8("center_keys"), quantize = hr.u8("quantize_generated");
  if (center > 1 || quantize > 1) hr.fail("center_keys / quantize_generated must be 0 or 1");
  h.center_keys = center == 1;
  h.quantize_generated = quantize == 1;
  h.page_layout_version = hr.u32("page_layout_version");
  h.key_head_bytes = hr.u32("key_head_bytes");
  h.value_head_bytes = hr.u32("value_head_bytes");
  if (hr.remaining() != 0) hr.fail(std::to_string(hr.remaining()) + " unexpected trailing bytes");

  ByteReader tr = take_section(r, kTagTokens, "TOKS");
  const uint32_t n_tokens = tr.u32("n_tokens");
  if (n_tokens > tr.remaining() / 4) tr.fail("n_tokens " + std::to_string(n_tokens) + " too large");
  h.tokens.resize(n_tokens);
  for (auto& id : h.tokens) {
    id = static_cast<int32_t>(tr.u32("token"));
    if (id < 0 || static_cast<uint32_t>(id) >= h.owner.vocab_size) {
      tr.fail("token id " + std::to_string(id) + " is outside the vocabulary of " +
              std::to_string(h.owner.vocab_size));
    }
  }
  const uint32_t n_logits = tr.u32("n_logits");
  if (n_logits != 0 && n_logits != h.owner.vocab_size) {
    tr.fail("n_logits " + std::to_string(n_logits) + " is neither 0 nor the vocabulary size");
  }
  h.logits.resize(n_logits);
  for (float& x : h.logits) {
    x = tr.f32("logit");
    if (!std::isfinite(x)) tr.fail("a logit is not finite");
  }
  if (tr.remaining() != 0) tr.fail(std::to_string(tr.remaining()) + " unexpected trailing bytes");

  for (uint32_t l = 0; l < h.owner.n_layers; ++l) {
    ByteReader lr = take_section(r, kTagLayer, "LAYR " + std::to_string(l));
    f.layer_data.push_back(lr.take(0, "layer"));
    f.layer_size.push_back(lr.remaining());
  }
  if (r.remaining() != 0) {
    r.fail(std::to_string(r.remaining()) + " bytes after the last layer section");
  }
  return f;
}

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
                  "--value-codebooks); nothing was loaded");
  }
  differ("rotation seed", f.seed, here.seed, w);
  differ("page_tokens", f.page_tokens, here.page_tokens, w);
  differ("--sink", f.sink_tokens, here.sink_tokens, w);
  differ("--recent", f.recent_tokens, here.recent_tokens, w);
  differ("key centering (0: --no-center-keys)", int{f.center_keys}, int{here.center_keys}, w);
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

// Decodes the filled slots of every page and refuses codes that decode to non-finite values.
void check_pages(const KvCache::Impl& m, const SequenceLayer& sl, ByteReader& r) {
  const size_t page_tokens = static_cast<size_t>(m.options.page_tokens);
  std::vector<float> out(page_tokens * static_cast<size_t>(m.options.head_dim));
  for (size_t p = 0; p < sl.pages; ++p) {
    const size_t n = std::min(page_tokens, sl.coded - p * page_tokens);
    for (int h = 0; h < m.options.n_kv_heads; ++h) {
      for (const bool key : {true, false}) {
        const PageFormat& format = key ? *m.key_format : *m.value_format;
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
    const uint64_t slabs = (pages + kSlabPages - 1) / kSlabPages;
    if (slabs > 0 && m.key_slab_bytes() + m.value_slab_bytes() > file.layer_size[l] / slabs) {
      r.fail(std::to_string(pages) + " pages do not fit in the layer section");
    }
    const uint64_t expected = 4 + 6 * 8 + 4 + uint64_t{mean_floats} * 4 +
                              2 * (sink + tail) * m.row_floats * 4 +
                              slabs * (m.key_slab_bytes() + m.value_slab_bytes());
    if (expected != file.layer_size[l]) {
      r.fail("the layer section is " + std::to_string(file.layer_size[l]) +
             " bytes; its counts need " + std::to_string(expected));
    }
    if (mean_floats > 0) {
      sl.key_mean.resize(mean_floats);
      std::memcpy(sl.key_mean.data(), r.take(mean_floats * sizeof(float), "key_mean"),
                  mean_floats * sizeof(float));
      for (float x : sl.key_mean) {
        if (!std::isfinite(x)) r.fail("a key mean is not finite");
      }
    }
    read_rows(r, sl.sink, sink, m.row_floats, "sink row");
    for (auto* slabs_of : {&sl.k_slabs, &sl.v_slabs}) {
      const size_t bytes = slabs_of == &sl.k_slabs ? m.key_slab_bytes() : m.value_slab_bytes();
      for (uint64_t s = 0; s < slabs; ++s) {
        slabs_of->push_back(allocate_page(bytes));
        std::memcpy(slabs_of->back().get(), r.take(bytes, "page"), bytes);
      }
    }
    sl.pages = pages;
    read_rows(r, sl.tail, tail, m.row_floats, "tail row");
    if (m.codable(sl) != coded) {
      r.fail("coded " + std::to_string(coded) +
             " is not what the cache's windows and groups give (" + std::to_string(m.codable(sl)) +
             ")");
    }
    check_pages(m, sl, r);
  }
  const SequenceId id = m.next_id++;
  m.sequences.emplace(id, std::move(layers));
  return id;
}

}  // namespace polarquant
