#include <polarquant/error.h>
#include <polarquant/kv_cache.h>
#include <polarquant/polar_codec.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>

#include "cache/kv_cache_impl.h"

namespace polarquant {

void AlignedDeleter::operator()(uint8_t* p) const {
  std::free(p);
}

PageBuffer allocate_slab(size_t bytes) {
  void* p =
      std::aligned_alloc(kPageAlignment, round_up(std::max<size_t>(bytes, 1), kPageAlignment));
  if (p == nullptr) throw std::bad_alloc();
  std::memset(p, 0, bytes);
  return PageBuffer(static_cast<uint8_t*>(p));
}

void TokenRows::push(const float* k, const float* v, size_t n) {
  if (begin_ + count_ + n > capacity_) {
    const size_t needed = count_ + n;
    if (needed > capacity_) {
      const size_t capacity = round_up(needed, step_);
      auto k_new = std::make_unique<float[]>(capacity * row_floats_);
      auto v_new = std::make_unique<float[]>(capacity * row_floats_);
      if (count_ > 0) {
        std::memcpy(k_new.get(), this->k(0), count_ * row_floats_ * sizeof(float));
        std::memcpy(v_new.get(), this->v(0), count_ * row_floats_ * sizeof(float));
      }
      k_ = std::move(k_new);
      v_ = std::move(v_new);
      capacity_ = capacity;
    } else {  // enough room once the live rows move to the front
      std::memmove(k_.get(), this->k(0), count_ * row_floats_ * sizeof(float));
      std::memmove(v_.get(), this->v(0), count_ * row_floats_ * sizeof(float));
    }
    begin_ = 0;
  }
  std::memcpy(k_.get() + (begin_ + count_) * row_floats_, k, n * row_floats_ * sizeof(float));
  std::memcpy(v_.get() + (begin_ + count_) * row_floats_, v, n * row_floats_ * sizeof(float));
  count_ += n;
}

void TokenRows::drop_front(size_t n) {
  begin_ += n;
  count_ -= n;
  if (count_ == 0) begin_ = 0;
}

void TokenRows::shrink() {
  const size_t capacity = round_up(count_, step_);
  if (capacity >= capacity_) return;
  if (capacity == 0) {
    clear();
    return;
  }
  auto k_new = std::make_unique<float[]>(capacity * row_floats_);
  auto v_new = std::make_unique<float[]>(capacity * row_floats_);
  std::memcpy(k_new.get(), this->k(0), count_ * row_floats_ * sizeof(float));
  std::memcpy(v_new.get(), this->v(0), count_ * row_floats_ * sizeof(float));
  k_ = std::move(k_new);
  v_ = std::move(v_new);
  capacity_ = capacity;
  begin_ = 0;
}

void TokenRows::clear() {
  k_.reset();
  v_.reset();
  begin_ = count_ = capacity_ = 0;
}

namespace {

void check_options(const KvCacheOptions& o) {
  auto range = [](const char* field, long long value, long long lo, long long hi) {
    if (value < lo || value > hi) {
      throw_invalid("KvCacheOptions." + std::string(field) + " = " + std::to_string(value) +
                    " out of range; expected " + std::to_string(lo) + ".." + std::to_string(hi));
    }
  };
  range("n_layers", o.n_layers, 1, 4096);
  range("n_kv_heads", o.n_kv_heads, 1, 4096);
  range("head_dim", o.head_dim, 1, 65536);
  range("page_tokens", o.page_tokens, 1, 1 << 16);
  range("sink_tokens", o.sink_tokens, 0, 1 << 30);
  range("recent_tokens", o.recent_tokens, 0, 1 << 30);
}

// The codec with the angle codebooks of a PQCB file (save_codebooks) instead of the analytic ones.
std::unique_ptr<Codec> with_codebooks(std::unique_ptr<Codec> codec, const std::string& path,
                                      const char* role) {
  if (path.empty()) return codec;
  const auto* polar = dynamic_cast<const PolarCodec*>(codec.get());
  if (polar == nullptr) {
    throw_invalid(std::string(role) + " codebooks '" + path + "' given, but the " + role +
                  " codec '" + codec->name() + "' is not a PolarQuant codec");
  }
  PolarConfig config = polar->config();
  config.codebooks = load_codebooks(path);
  try {
    config.validate();
  } catch (const Error& e) {
    throw_invalid(std::string(role) + " codebooks '" + path + "' do not suit codec '" +
                  config.name + "': " + e.what());
  }
  return std::make_unique<PolarCodec>(std::move(config));
}

// online_codebooks: fits the sequence-layer's codecs to the rows of its first append (k already
// centered). The seed depends on the cache's seed, the layer and the side only, so the fit depends
// only on the rows.
void fit_online(const KvCache::Impl& m, SequenceLayer& sl, int layer, const float* k,
                const float* v, size_t n_tokens) {
  const size_t rows = n_tokens * static_cast<size_t>(m.options.n_kv_heads);
  const uint64_t seed = m.options.seed ^ (0x9e3779b97f4a7c15ull * (2 * uint64_t(layer) + 1));
  if (const auto* polar = dynamic_cast<const PolarCodec*>(m.key_codec.get())) {
    sl.key_codec = fit_online_codec(*polar, k, rows, seed);
    sl.key_format = make_page_format(*sl.key_codec, m.options.page_tokens);
  }
  if (const auto* polar = dynamic_cast<const PolarCodec*>(m.value_codec.get())) {
    sl.value_codec = fit_online_codec(*polar, v, rows, seed + 1);
    sl.value_format = make_page_format(*sl.value_codec, m.options.page_tokens);
  }
}

// key_rope_inv_freq: one RopeCenter per distinct frequency set (head_dim / 2 values for every
// layer, or n_layers x head_dim / 2 layer-major) and each layer's index into them. RopeCenter
// checks the values.
void make_rope_centers(KvCache::Impl& m) {
  const KvCacheOptions& o = m.options;
  const std::vector<float>& f = o.key_rope_inv_freq;
  const size_t half = static_cast<size_t>(o.head_dim / 2), layers = static_cast<size_t>(o.n_layers);
  if (!f.empty() && !o.center_keys) {
    throw_invalid("KvCacheOptions.key_rope_inv_freq refines key centering; set center_keys too");
  }
  if (!f.empty() && (o.head_dim % 2 != 0 || (f.size() != half && f.size() != layers * half))) {
    throw_invalid("KvCacheOptions.key_rope_inv_freq has " + std::to_string(f.size()) +
                  " frequencies; expected head_dim / 2 = " + std::to_string(half) +
                  " (every layer) or n_layers x head_dim / 2 = " + std::to_string(layers * half) +
                  " (one set per layer)" +
                  (o.head_dim % 2 != 0 ? "; head_dim must be even" : std::string()));
  }
  m.layer_rope.assign(layers, 0);
  std::vector<std::vector<float>> sets;
  const size_t n_sets = f.size() > half ? layers : 1, set_size = f.empty() ? 0 : half;
  for (size_t l = 0; l < n_sets; ++l) {
    const auto first = f.begin() + static_cast<long>(l * set_size);
    const std::vector<float> set(first, first + static_cast<long>(set_size));
    const size_t at = static_cast<size_t>(std::find(sets.begin(), sets.end(), set) - sets.begin());
    if (at == sets.size()) {
      sets.push_back(set);
      m.ropes.emplace_back(set, o.key_rope_neox, o.head_dim, o.page_tokens, o.sink_tokens);
    }
    m.layer_rope[l] = at;
  }
}

}  // namespace

KvCache::KvCache(const KvCacheOptions& options) : impl_(std::make_unique<Impl>()) {
  check_options(options);
  Impl& m = *impl_;
  m.options = options;
  m.key_codec = make_codec(options.key_codec, options.head_dim, options.seed);
  m.value_codec = make_codec(options.value_codec, options.head_dim, options.seed);
  m.key_codec = with_codebooks(std::move(m.key_codec), options.key_codebooks, "key");
  m.value_codec = with_codebooks(std::move(m.value_codec), options.value_codebooks, "value");
  if (options.online_codebooks) {
    if (!options.key_codebooks.empty() || !options.value_codebooks.empty()) {
      throw_invalid(
          "KvCacheOptions.online_codebooks fits the codebooks at prefill; it cannot be combined "
          "with codebook files (key_codebooks '" +
          options.key_codebooks + "', value_codebooks '" + options.value_codebooks + "')");
    }
    if (dynamic_cast<const PolarCodec*>(m.key_codec.get()) == nullptr &&
        dynamic_cast<const PolarCodec*>(m.value_codec.get()) == nullptr) {
      throw_invalid(
          "KvCacheOptions.online_codebooks needs a PolarQuant key or value codec; key "
          "codec '" +
          options.key_codec + "' and value codec '" + options.value_codec +
          "' have no angle codebooks");
    }
  }
  m.group = std::lcm(m.key_codec->group_size(), m.value_codec->group_size());
  if (options.page_tokens % m.group != 0) {
    throw_invalid("KvCacheOptions.page_tokens = " + std::to_string(options.page_tokens) +
                  " is not a multiple of the codecs' group size " + std::to_string(m.group) +
                  " (key codec '" + options.key_codec + "', value codec '" + options.value_codec +
                  "')");
  }
  m.key_format = make_page_format(*m.key_codec, options.page_tokens);
  m.value_format = make_page_format(*m.value_codec, options.page_tokens);
  m.row_floats = static_cast<size_t>(options.n_kv_heads) * options.head_dim;
  make_rope_centers(m);
}

KvCache::~KvCache() = default;

const KvCacheOptions& KvCache::options() const {
  return impl_->options;
}

SequenceId KvCache::add_sequence() {
  Impl& m = *impl_;
  const SequenceId id = m.next_id++;
  std::vector<SequenceLayer> layers(m.options.n_layers);
  for (auto& sl : layers) {
    sl.sink.init(m.row_floats, static_cast<size_t>(std::max(m.options.sink_tokens, 1)));
    sl.tail.init(m.row_floats, static_cast<size_t>(m.options.page_tokens));
  }
  m.sequences.emplace(id, std::move(layers));
  return id;
}

void KvCache::free_sequence(SequenceId seq) {
  if (impl_->sequences.erase(seq) == 0) {
    throw_state("KvCache::free_sequence: sequence " + std::to_string(seq) +
                " is unknown or already freed");
  }
}

bool KvCache::has_sequence(SequenceId seq) const {
  return impl_->sequences.count(seq) != 0;
}

const SequenceLayer& KvCache::Impl::layer(SequenceId seq, int layer, const char* caller) const {
  const auto it = sequences.find(seq);
  if (it == sequences.end()) {
    throw_state(std::string(caller) + ": sequence " + std::to_string(seq) +
                " is unknown or was freed");
  }
  if (layer < 0 || layer >= options.n_layers) {
    throw_invalid(std::string(caller) + ": layer " + std::to_string(layer) +
                  " out of range; the cache has " + std::to_string(options.n_layers) + " layers");
  }
  return it->second[layer];
}

SequenceLayer& KvCache::Impl::layer(SequenceId seq, int layer, const char* caller) {
  return const_cast<SequenceLayer&>(static_cast<const Impl*>(this)->layer(seq, layer, caller));
}

void KvCache::Impl::add_page(SequenceLayer& sl) const {
  if (sl.pages == allocated_pages(sl)) {
    const size_t pages = slab_pages(sl.k_slabs.size());
    sl.k_slabs.push_back(allocate_slab(pages * key_page_bytes()));
    sl.v_slabs.push_back(allocate_slab(pages * value_page_bytes()));
  }
  ++sl.pages;
}

size_t KvCache::Impl::codable(const SequenceLayer& sl) const {
  const size_t sink = sl.sink.size();
  const size_t recent = static_cast<size_t>(options.recent_tokens);
  size_t limit = sl.length > recent ? sl.length - recent : 0;
  if (!options.quantize_generated) limit = std::min(limit, sl.prompt);
  if (limit <= sink) return 0;
  return (limit - sink) / group * group;
}

void KvCache::append(SequenceId seq, int layer, const float* k, const float* v, size_t n_tokens) {
  Impl& m = *impl_;
  SequenceLayer& sl = m.layer(seq, layer, "KvCache::append");
  if (n_tokens == 0) return;
  if (k == nullptr || v == nullptr) throw_invalid("KvCache::append: k or v is null");
  const size_t count = n_tokens * m.row_floats;
  for (const float* x : {k, v}) {
    for (size_t i = 0; i < count; ++i) {
      if (!std::isfinite(x[i])) {
        throw_invalid(std::string("KvCache::append: ") + (x == k ? "k" : "v") + " of token " +
                      std::to_string(i / m.row_floats) + " (of " + std::to_string(n_tokens) +
                      "), kv head " + std::to_string(i % m.row_floats / m.options.head_dim) +
                      ", coordinate " + std::to_string(i % m.options.head_dim) + " is " +
                      std::to_string(x[i]) + "; expected finite values");
      }
    }
  }
  if (!sl.started) {
    sl.started = true;
    sl.prompt = n_tokens;
    if (m.options.center_keys) {
      sl.key_mean.assign(m.row_floats, 0.0f);
      std::vector<double> sum(m.row_floats, 0.0);
      for (size_t t = 0; t < n_tokens; ++t) {
        for (size_t i = 0; i < m.row_floats; ++i) sum[i] += k[t * m.row_floats + i];
      }
      for (size_t i = 0; i < m.row_floats; ++i)
        sl.key_mean[i] = static_cast<float>(sum[i] / n_tokens);
      if (m.rope(layer).enabled()) {
        sl.key_mean_pre.resize(m.row_floats);
        m.rope(layer).pre_rope_mean(k, n_tokens, 0, m.options.n_kv_heads, sl.key_mean_pre.data());
      }
    }
  }
  thread_local std::vector<float> centered;
  if (!sl.key_mean.empty()) {
    centered.resize(count);
    for (size_t i = 0; i < count; ++i) centered[i] = k[i] - sl.key_mean[i % m.row_floats];
    k = centered.data();
  }
  if (m.options.online_codebooks && sl.length == 0) fit_online(m, sl, layer, k, v, n_tokens);
  // Sink positions first, the rest into the full-precision tail.
  const size_t sink_room = static_cast<size_t>(m.options.sink_tokens) - sl.sink.size();
  const size_t to_sink =
      sl.length < static_cast<size_t>(m.options.sink_tokens) ? std::min(n_tokens, sink_room) : 0;
  if (to_sink > 0) sl.sink.push(k, v, to_sink);
  if (n_tokens > to_sink) {
    sl.tail.push(k + to_sink * m.row_floats, v + to_sink * m.row_floats, n_tokens - to_sink);
  }
  sl.length += n_tokens;

  // Move the tokens that may now be quantized from the tail into pages, page by page.
  const size_t target = m.codable(sl);
  const size_t page_tokens = static_cast<size_t>(m.options.page_tokens);
  while (sl.coded < target) {
    const size_t slot = sl.coded % page_tokens;
    if (slot == 0) m.add_page(sl);
    const size_t page = sl.pages - 1;
    const size_t n = std::min(target - sl.coded, page_tokens - slot);
    const float* keys = sl.tail.k(0);
    thread_local std::vector<float> shifted, delta;
    if (!sl.key_mean_pre.empty()) {  // this page's RoPE-rotated mean (rope_center.h)
      RopeCenter& rope = m.rope(layer);
      rope.cover(page + 1);
      delta.resize(m.row_floats);
      rope.page_delta(page, sl.key_mean_pre.data(), sl.key_mean.data(), m.options.n_kv_heads,
                      delta.data());
      shifted.resize(n * m.row_floats);
      for (size_t i = 0; i < shifted.size(); ++i) shifted[i] = keys[i] - delta[i % m.row_floats];
      keys = shifted.data();
    }
    m.key_format_of(sl).store(keys, n, m.options.n_kv_heads,
                              const_cast<uint8_t*>(m.key_region(sl, page, 0)),
                              m.head_stride(true, page), slot);
    m.value_format_of(sl).store(sl.tail.v(0), n, m.options.n_kv_heads,
                                const_cast<uint8_t*>(m.value_region(sl, page, 0)),
                                m.head_stride(false, page), slot);
    sl.tail.drop_front(n);
    sl.coded += n;
  }
  sl.tail.shrink();
}

size_t KvCache::length(SequenceId seq, int layer) const {
  return impl_->layer(seq, layer, "KvCache::length").length;
}

void KvCache::read(SequenceId seq, int layer, size_t begin, size_t end, float* k, float* v) const {
  const Impl& m = *impl_;
  const SequenceLayer& sl = m.layer(seq, layer, "KvCache::read");
  if (begin > end || end > sl.length) {
    throw_invalid("KvCache::read: range [" + std::to_string(begin) + ", " + std::to_string(end) +
                  ") is not inside the sequence's " + std::to_string(sl.length) + " tokens");
  }
  const size_t row = m.row_floats;
  const size_t dim = static_cast<size_t>(m.options.head_dim);
  const size_t sink = sl.sink.size();
  const size_t page_tokens = static_cast<size_t>(m.options.page_tokens);
  const size_t group = static_cast<size_t>(m.group);
  std::vector<float> kbuf, vbuf;
  for (size_t pos = begin; pos < end;) {
    float* ko = k + (pos - begin) * row;
    float* vo = v + (pos - begin) * row;
    if (pos < sink) {
      std::memcpy(ko, sl.sink.k(pos), row * sizeof(float));
      std::memcpy(vo, sl.sink.v(pos), row * sizeof(float));
      ++pos;
    } else if (pos < sink + sl.coded) {
      // Decode whole groups of one page, then copy the wanted positions.
      const size_t c = pos - sink;
      const size_t page = c / page_tokens;
      const size_t first = c % page_tokens / group * group;
      const size_t stop = std::min({(page + 1) * page_tokens, sl.coded, end - sink});
      const size_t last = round_up(stop - page * page_tokens, group);
      const size_t n = last - first;
      kbuf.resize(n * dim);
      vbuf.resize(n * dim);
      for (int h = 0; h < m.options.n_kv_heads; ++h) {
        m.key_format_of(sl).load(m.key_region(sl, page, h), first, n, kbuf.data());
        m.value_format_of(sl).load(m.value_region(sl, page, h), first, n, vbuf.data());
        for (size_t p = pos; p < stop + sink; ++p) {
          const size_t s = p - sink - page * page_tokens - first;
          std::memcpy(k + (p - begin) * row + h * dim, &kbuf[s * dim], dim * sizeof(float));
          std::memcpy(v + (p - begin) * row + h * dim, &vbuf[s * dim], dim * sizeof(float));
        }
      }
      pos = stop + sink;
    } else {
      const size_t i = pos - sink - sl.coded;
      std::memcpy(ko, sl.tail.k(i), row * sizeof(float));
      std::memcpy(vo, sl.tail.v(i), row * sizeof(float));
      ++pos;
    }
  }
  if (!sl.key_mean.empty()) {
    for (size_t i = 0; i < (end - begin) * row; ++i) k[i] += sl.key_mean[i % row];
  }
  if (!sl.key_mean_pre.empty()) {  // each coded row's page difference (rope_center.h)
    m.rope(layer).add_page_deltas(sl.key_mean_pre.data(), sl.key_mean.data(), m.options.n_kv_heads,
                                  sink, sl.coded, begin, end, k);
  }
}

KvMemoryStats KvCache::memory() const {
  const Impl& m = *impl_;
  KvMemoryStats stats;
  stats.layer_bytes.assign(m.options.n_layers, 0);
  for (const auto& [id, layers] : m.sequences) {
    for (int l = 0; l < m.options.n_layers; ++l) {
      const SequenceLayer& sl = layers[l];
      stats.layer_bytes[l] +=
          Impl::allocated_pages(sl) * (m.key_page_bytes() + m.value_page_bytes()) +
          (sl.k_slabs.size() + sl.v_slabs.size()) * sizeof(PageBuffer) + sl.sink.bytes() +
          sl.tail.bytes() + (sl.key_mean.size() + sl.key_mean_pre.size()) * sizeof(float);
      if (l == 0) stats.tokens += sl.length;
      stats.fp16_bytes += sl.length * m.row_floats * 2 * sizeof(uint16_t);
    }
  }
  for (size_t b : stats.layer_bytes) stats.total_bytes += b;
  return stats;
}

}  // namespace polarquant
