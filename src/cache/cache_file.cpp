#include "cache/cache_file.h"

#include <polarquant/error.h>
#include <polarquant/polar_codec.h>

#include <cmath>
#include <cstring>

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

// Version 2's RoPE-aware centering fields: u8 on, u8 neox, u32 n, n f32 frequencies. n is
// head_dim / 2 (every layer) or, since version 3, n_layers x head_dim / 2 (one set per layer).
void read_rope_center(ByteReader& hr, CacheFileHeader& h) {
  const uint8_t on = hr.u8("rope_center"), neox = hr.u8("rope_neox");
  if (on > 1 || neox > 1) hr.fail("rope_center / rope_neox must be 0 or 1");
  h.rope_center = on == 1;
  h.rope_neox = neox == 1;
  const uint32_t n = hr.u32("rope_frequencies");
  const uint64_t half = h.owner.head_dim / 2, per_layer = uint64_t{h.owner.n_layers} * half;
  if (h.rope_center && h.version < 3 && n == per_layer && n != half) {
    hr.fail("a version " + std::to_string(h.version) + " file with " + std::to_string(n) +
            " RoPE frequencies (one set per layer, " + std::to_string(h.owner.n_layers) +
            " layers): per-layer sets need version 3; version 2 stores head_dim / 2 = " +
            std::to_string(half));
  }
  const bool count_ok = h.rope_center ? n == half || (h.version >= 3 && n == per_layer) : n == 0;
  if (!count_ok || (h.rope_center && (h.owner.head_dim % 2 != 0 || !h.center_keys)) ||
      (!h.rope_center && h.rope_neox)) {
    hr.fail("RoPE centering " + std::to_string(on) + " (neox " + std::to_string(neox) + ") with " +
            std::to_string(n) + " frequencies, head_dim " + std::to_string(h.owner.head_dim) +
            ", n_layers " + std::to_string(h.owner.n_layers) + " and center_keys " +
            std::to_string(int{h.center_keys}) +
            ": on needs center_keys, an even head_dim and head_dim / 2 frequencies (or, since "
            "version 3, n_layers x head_dim / 2); off needs none and neox 0");
  }
  if (n > hr.remaining() / 4) {
    hr.fail("truncated: " + std::to_string(n) + " RoPE frequencies need " +
            std::to_string(uint64_t{n} * 4) + " bytes but only " + std::to_string(hr.remaining()) +
            " remain");
  }
  h.rope_inv_freq.resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    const float f = hr.f32("rope_frequency");
    if (!std::isfinite(f) || f < 0.0f) {
      hr.fail("RoPE frequency " + std::to_string(i) + " is " + std::to_string(f) +
              "; expected a finite frequency >= 0");
    }
    h.rope_inv_freq[i] = f;
  }
}

}  // namespace

CacheFileHeader cache_file_header(const KvCache& cache, const CacheOwner& owner) {
  const KvCache::Impl& m = cache.impl();
  const KvCacheOptions& o = m.options;
  if (o.online_codebooks) {
    throw_invalid(
        "prompt-cache files do not store online codebooks (--codebooks online fits them per "
        "sequence and layer); use the analytic or file codebooks with a prompt cache");
  }
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
  h.rope_center = !o.key_rope_inv_freq.empty();
  h.rope_neox = h.rope_center && o.key_rope_neox;
  if (h.rope_center) h.rope_inv_freq = o.key_rope_inv_freq;
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
  w.u8(h.rope_center);
  w.u8(h.rope_neox);
  w.u32(static_cast<uint32_t>(h.rope_inv_freq.size()));
  for (float f : h.rope_inv_freq) w.f32(f);
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
    p.u32(static_cast<uint32_t>(sl.key_mean_pre.size()));
    p.raw(sl.key_mean_pre.data(), sl.key_mean_pre.size() * sizeof(float));
    put_rows(p, sl.sink, m.row_floats);
    // Pages one after another, each its heads' regions in head order, K then V: the bytes do not
    // depend on how the cache groups pages into slabs in memory.
    for (const bool keys : {true, false}) {
      for (size_t page = 0; page < sl.pages; ++page) {
        for (int h = 0; h < m.options.n_kv_heads; ++h) {
          p.raw(m.region(sl, keys, page, h), m.head_bytes(keys));
        }
      }
    }
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
  if (h.version < 1 || h.version > kCacheFileVersion) {
    throw_format("cache file '" + where + "' has version " + std::to_string(h.version) +
                 "; this build reads versions 1 to " + std::to_string(kCacheFileVersion));
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
  if (h.version >= 2) read_rope_center(hr, h);  // version 1: no RoPE-aware centering
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

}  // namespace polarquant
