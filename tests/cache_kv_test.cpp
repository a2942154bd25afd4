// KvCache: storage runs (sink / pages / recent window / generated tokens), bulk vs token-by-token
// appends, exact memory accounting, and the errors misuse gets.
#include <gtest/gtest.h>
#include <polarquant/error.h>
#include <polarquant/kv_cache.h>

#include <cstring>
#include <string>

#include "cache/kv_cache_impl.h"
#include "cache_test_util.h"

namespace polarquant {
namespace {

using testing::max_abs_diff;
using testing::token_data;

KvCacheOptions options_for(const std::string& k, const std::string& v, int dim = 64) {
  KvCacheOptions o;
  o.n_layers = 2;
  o.n_kv_heads = 2;
  o.head_dim = dim;
  o.key_codec = k;
  o.value_codec = v;
  o.page_tokens = 32;
  return o;
}

std::vector<float> read_k(const KvCache& cache, SequenceId s, int layer, size_t b, size_t e,
                          std::vector<float>* v_out = nullptr) {
  const size_t row = static_cast<size_t>(cache.options().n_kv_heads) * cache.options().head_dim;
  std::vector<float> k((e - b) * row), v((e - b) * row);
  cache.read(s, layer, b, e, k.data(), v.data());
  if (v_out) *v_out = v;
  return k;
}

TEST(CacheKv, F32RoundTripIsExactAcrossAllRuns) {
  KvCacheOptions o = options_for("f32", "f32");
  o.sink_tokens = 3;
  o.recent_tokens = 5;
  o.page_tokens = 16;
  KvCache cache(o);
  const SequenceId s = cache.add_sequence();
  const auto data = token_data(77, o.n_kv_heads, o.head_dim, 1);
  const size_t row = 2 * 64;
  size_t done = 0;
  for (size_t chunk : {10u, 1u, 1u, 30u, 2u, 33u}) {
    cache.append(s, 1, &data.k[done * row], &data.v[done * row], chunk);
    done += chunk;
    std::vector<float> v;
    const auto k = read_k(cache, s, 1, 0, done, &v);
    EXPECT_EQ(k, std::vector<float>(data.k.begin(), data.k.begin() + done * row));
    EXPECT_EQ(v, std::vector<float>(data.v.begin(), data.v.begin() + done * row));
  }
  EXPECT_EQ(cache.length(s, 1), 77u);
  EXPECT_EQ(cache.length(s, 0), 0u);
  // A read of an inner range agrees with the same rows of a full read.
  const auto inner = read_k(cache, s, 1, 20, 50);
  EXPECT_EQ(inner, std::vector<float>(data.k.begin() + 20 * row, data.k.begin() + 50 * row));
}

TEST(CacheKv, WindowsStayExactAndTheRestIsQuantized) {
  KvCacheOptions o = options_for("paper", "paper");
  o.sink_tokens = 4;
  o.recent_tokens = 8;
  KvCache cache(o);
  const SequenceId s = cache.add_sequence();
  const size_t n = 100, row = 2 * 64;
  const auto data = token_data(n, o.n_kv_heads, o.head_dim, 2);
  cache.append(s, 0, data.k.data(), data.v.data(), n);
  const auto k = read_k(cache, s, 0, 0, n);
  for (size_t t = 0; t < n; ++t) {
    const bool exact = t < 4 || t >= n - 8;
    const bool same = std::memcmp(&k[t * row], &data.k[t * row], row * sizeof(float)) == 0;
    EXPECT_EQ(same, exact) << "token " << t;
    // Quantized tokens are close: the paper preset's NMSE is about 3e-2 (FORMAT: paper preset).
    double err = 0, norm = 0;
    for (size_t j = 0; j < row; ++j) {
      err += std::pow(k[t * row + j] - data.k[t * row + j], 2);
      norm += std::pow(data.k[t * row + j], 2);
    }
    EXPECT_LT(err / norm, 0.12) << "token " << t;
  }
}

TEST(CacheKv, QuantizeGeneratedFalseKeepsGeneratedTokensExact) {
  KvCacheOptions o = options_for("paper", "paper");
  o.quantize_generated = false;
  o.recent_tokens = 4;
  KvCache cache(o);
  const SequenceId s = cache.add_sequence();
  const size_t prompt = 40, total = 80, row = 2 * 64;
  const auto data = token_data(total, o.n_kv_heads, o.head_dim, 3);
  cache.append(s, 0, data.k.data(), data.v.data(), prompt);
  for (size_t t = prompt; t < total; ++t) {
    cache.append(s, 0, &data.k[t * row], &data.v[t * row], 1);
  }
  const auto k = read_k(cache, s, 0, 0, total);
  for (size_t t = 0; t < total; ++t) {
    const bool same = std::memcmp(&k[t * row], &data.k[t * row], row * sizeof(float)) == 0;
    // Prompt tokens that left the recent window were quantized; generated ones never are.
    EXPECT_EQ(same, t >= prompt) << "token " << t;
  }
}

TEST(CacheKv, PartialGroupStaysFullPrecisionUntilItFills) {
  // kivi4k codes groups of 32 tokens; with page_tokens 64 the 33rd token waits for 31 more.
  KvCacheOptions o = options_for("kivi4k", "f16");
  o.page_tokens = 64;
  KvCache cache(o);
  const SequenceId s = cache.add_sequence();
  const size_t row = 2 * 64;
  const auto data = token_data(64, o.n_kv_heads, o.head_dim, 4);
  for (size_t t = 0; t < 64; ++t) {
    cache.append(s, 0, &data.k[t * row], &data.v[t * row], 1);
    const auto k = read_k(cache, s, 0, 0, t + 1);
    const size_t coded = (t + 1) / 32 * 32;
    EXPECT_EQ(cache.impl().layer(s, 0, "test").coded, coded);
    for (size_t u = 0; u <= t; ++u) {
      const bool same = std::memcmp(&k[u * row], &data.k[u * row], row * sizeof(float)) == 0;
      EXPECT_EQ(same, u >= coded) << "after " << t + 1 << " tokens, token " << u;
    }
  }
}

// Every stored byte (pages and full-precision rows) after one bulk append equals the bytes after
// appending the same tokens one at a time.
TEST(CacheKv, BulkAndTokenByTokenStoreIdenticalCodes) {
  for (const char* codec : {"paper", "polar37", "f16", "kivi4k", "q4_0"}) {
    SCOPED_TRACE(codec);
    KvCacheOptions o = options_for(codec, codec == std::string("kivi4k") ? "kivi4v" : codec);
    o.sink_tokens = 2;
    o.recent_tokens = 3;
    KvCache bulk(o), single(o);
    const SequenceId a = bulk.add_sequence(), b = single.add_sequence();
    const size_t n = 101, row = 2 * 64;
    const auto data = token_data(n, o.n_kv_heads, o.head_dim, 5);
    bulk.append(a, 1, data.k.data(), data.v.data(), n);
    for (size_t t = 0; t < n; ++t) single.append(b, 1, &data.k[t * row], &data.v[t * row], 1);
    const SequenceLayer& x = bulk.impl().layer(a, 1, "test");
    const SequenceLayer& y = single.impl().layer(b, 1, "test");
    ASSERT_EQ(x.coded, y.coded);
    ASSERT_EQ(x.k_slabs.size(), y.k_slabs.size());
    ASSERT_EQ(x.pages, y.pages);
    const KvCache::Impl& m = bulk.impl();
    for (size_t p = 0; p < x.pages; ++p) {
      for (int h = 0; h < o.n_kv_heads; ++h) {
        for (const bool keys : {true, false}) {
          EXPECT_EQ(std::memcmp(m.region(x, keys, p, h), single.impl().region(y, keys, p, h),
                                m.head_bytes(keys)),
                    0)
              << "page " << p << ", head " << h << (keys ? ", keys" : ", values");
        }
      }
    }
    std::vector<float> va, vb;
    EXPECT_EQ(read_k(bulk, a, 1, 0, n, &va), read_k(single, b, 1, 0, n, &vb));
    EXPECT_EQ(va, vb);
  }
}

TEST(CacheKv, MemoryAccountingIsExact) {
  KvCacheOptions o = options_for("paper", "f16", 128);
  o.sink_tokens = 4;
  o.recent_tokens = 16;
  KvCache cache(o);
  const size_t row = 2 * 128;
  const auto data = token_data(300, o.n_kv_heads, o.head_dim, 6);
  const SequenceId s1 = cache.add_sequence(), s2 = cache.add_sequence();
  cache.append(s1, 0, data.k.data(), data.v.data(), 300);
  cache.append(s2, 0, data.k.data(), data.v.data(), 10);
  cache.append(s2, 1, data.k.data(), data.v.data(), 37);

  // Expected sizes from the layout rules (docs/FORMAT.md section 4): paper at d=128, T=32: 8 radii
  // fields of 64 B, 64 + 32 + 16 + 8 fields of 16 / 8 / 8 / 8 B -> 512 + 1024 + 256 + 128 + 64 =
  // 1984 B,
  // + 8 slack -> 2048 B per head; f16: 32 * 256 B = 8192 B per head.
  const size_t kpage = 2 * 2048, vpage = 2 * 8192;
  EXPECT_EQ(cache.impl().key_page_bytes(), kpage);
  EXPECT_EQ(cache.impl().value_page_bytes(), vpage);
  auto seq_bytes = [&](size_t len) {
    const size_t sink = std::min<size_t>(len, 4);
    const size_t coded = len > 20 ? len - 20 : 0;
    const size_t tail = len - sink - coded;
    const size_t pages = (coded + 31) / 32;
    // Eight slabs of 1 page, then eight of 2, 4, ... up to 32 pages (kv_cache_impl.h), allocated
    // whole.
    size_t slabs = 0, allocated = 0;
    for (; allocated < pages; ++slabs) allocated += std::min<size_t>(size_t{1} << (slabs / 8), 32);
    const size_t sink_cap = sink ? 4 : 0;
    // The tail's capacity is its rows rounded up to page_tokens (shrunk after each append).
    const size_t tail_cap = (tail + 31) / 32 * 32;
    return allocated * (kpage + vpage) + 2 * slabs * sizeof(PageBuffer) +
           2 * (sink_cap + tail_cap) * row * sizeof(float);
  };
  const KvMemoryStats m = cache.memory();
  ASSERT_EQ(m.layer_bytes.size(), 2u);
  EXPECT_EQ(m.layer_bytes[0], seq_bytes(300) + seq_bytes(10));
  EXPECT_EQ(m.layer_bytes[1], seq_bytes(37));
  EXPECT_EQ(m.total_bytes, m.layer_bytes[0] + m.layer_bytes[1]);
  EXPECT_EQ(m.tokens, 310u);
  EXPECT_EQ(m.fp16_bytes, (300 + 10 + 37) * row * 2 * 2);
  cache.free_sequence(s1);
  EXPECT_EQ(cache.memory().layer_bytes[0], seq_bytes(10));
}

template <typename F>
void expect_error(ErrorKind kind, const std::string& fragment, F&& f) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << fragment << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(CacheKv, MisuseGivesClearErrors) {
  KvCacheOptions o = options_for("paper", "paper");
  auto bad = [&](auto edit, const std::string& fragment) {
    KvCacheOptions b = o;
    edit(b);
    expect_error(ErrorKind::kInvalidArgument, fragment, [&] { KvCache c(b); });
  };
  bad([](KvCacheOptions& b) { b.n_layers = 0; }, "n_layers");
  bad([](KvCacheOptions& b) { b.n_kv_heads = -1; }, "n_kv_heads");
  bad([](KvCacheOptions& b) { b.page_tokens = 0; }, "page_tokens");
  bad([](KvCacheOptions& b) { b.page_tokens = 24; }, "multiple of 16");
  bad([](KvCacheOptions& b) { b.sink_tokens = -2; }, "sink_tokens");
  bad([](KvCacheOptions& b) { b.recent_tokens = -1; }, "recent_tokens");
  bad([](KvCacheOptions& b) { b.key_codec = "nope"; }, "unknown codec");
  bad(
      [](KvCacheOptions& b) {
        b.key_codec = "kivi4k";
        b.page_tokens = 16;
      },
      "group size");

  KvCache cache(o);
  const SequenceId s = cache.add_sequence();
  const auto data = token_data(2, o.n_kv_heads, o.head_dim, 7);
  expect_error(ErrorKind::kState, "sequence 99", [&] { cache.length(99, 0); });
  expect_error(ErrorKind::kInvalidArgument, "layer 2",
               [&] { cache.append(s, 2, data.k.data(), data.v.data(), 1); });
  auto nan_k = data.k;
  nan_k[70] = NAN;
  expect_error(ErrorKind::kInvalidArgument, "kv head 1, coordinate 6",
               [&] { cache.append(s, 0, nan_k.data(), data.v.data(), 1); });
  EXPECT_EQ(cache.length(s, 0), 0u);  // the refused append stored nothing
  cache.append(s, 0, data.k.data(), data.v.data(), 2);
  std::vector<float> k(3 * 128), v(3 * 128);
  expect_error(ErrorKind::kInvalidArgument, "[0, 3)",
               [&] { cache.read(s, 0, 0, 3, k.data(), v.data()); });
  cache.free_sequence(s);
  EXPECT_FALSE(cache.has_sequence(s));
  expect_error(ErrorKind::kState, "freed", [&] { cache.length(s, 0); });
  expect_error(ErrorKind::kState, "freed", [&] { cache.free_sequence(s); });
}

}  // namespace
}  // namespace polarquant
