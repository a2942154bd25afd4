// Growing page slabs (src/cache/kv_cache_impl.h, issue 16): 8 slabs each of 1, 2, 4, 8 and 16
// pages, then slabs of 32, so unused pages stay under 1/8 of a sequence's pages; each
// KV head's regions of a slab's pages are contiguous, token-by-token appends store and read back
// what a bulk append does across many slabs, and memory() counts exactly the slabs allocated.
#include <gtest/gtest.h>
#include <polarquant/kv_cache.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "cache/kv_cache_impl.h"
#include "cache_test_util.h"

namespace polarquant {
namespace {

using testing::token_data;

KvCacheOptions slab_options(const std::string& key, const std::string& value, int n_kv_heads) {
  KvCacheOptions o;
  o.n_layers = 1;
  o.n_kv_heads = n_kv_heads;
  o.head_dim = 64;
  o.key_codec = key;
  o.value_codec = value;
  o.page_tokens = 32;
  return o;
}

std::vector<float> read_range(const KvCache& cache, SequenceId s, size_t begin, size_t end) {
  const size_t row = static_cast<size_t>(cache.options().n_kv_heads) * cache.options().head_dim;
  std::vector<float> k((end - begin) * row), v((end - begin) * row);
  cache.read(s, 0, begin, end, k.data(), v.data());
  k.insert(k.end(), v.begin(), v.end());
  return k;
}

TEST(CacheSlabs, GeometryDoublesEveryEightSlabsUpToThirtyTwoPages) {
  std::vector<size_t> sizes;
  for (size_t c = 0; c < 5; ++c) sizes.insert(sizes.end(), 8, size_t{1} << c);
  sizes.insert(sizes.end(), 3, 32);
  for (size_t s = 0; s < sizes.size(); ++s) {
    EXPECT_EQ(slab_pages(s), sizes[s]) << "slab " << s;
    EXPECT_EQ(slab_first_page(s + 1), slab_first_page(s) + slab_pages(s)) << "slab " << s;
  }
  EXPECT_EQ(slab_first_page(0), 0u);
  EXPECT_EQ(slab_first_page(40), 248u);  // 8 x (1 + 2 + 4 + 8 + 16)
  for (size_t page = 0; page < 5000; ++page) {
    const SlabSpot at = slab_spot(page);
    ASSERT_LT(at.index, at.pages) << "page " << page;
    ASSERT_EQ(at.pages, slab_pages(at.slab)) << "page " << page;
    ASSERT_EQ(slab_first_page(at.slab) + at.index, page) << "page " << page;
    // Pages allocated for page + 1 pages in use: never more than 1/8 of them unused.
    const size_t used = page + 1, allocated = slab_first_page(at.slab + 1);
    ASSERT_LE(8 * (allocated - used), used) << used << " pages in use, " << allocated << " held";
  }
}

// 100 pages (8 slabs each of 1, 2 and 4 pages, then 6 of 8 pages: 30 slabs, 104 pages allocated):
// within a slab, head h's region of each page directly follows its region of the previous page, and
// head h's first region directly follows head h - 1's last.
TEST(CacheSlabs, RegionsOfALongSequenceAreContiguousPerHeadWithinASlab) {
  const KvCacheOptions o = slab_options("paper", "f16", 4);
  KvCache cache(o);
  const SequenceId s = cache.add_sequence();
  const size_t pages = 100, n = pages * 32;
  const auto data = token_data(n, o.n_kv_heads, o.head_dim, 3);
  cache.append(s, 0, data.k.data(), data.v.data(), n);
  const KvCache::Impl& m = cache.impl();
  const SequenceLayer& sl = m.layer(s, 0, "test");
  ASSERT_EQ(sl.pages, pages);
  EXPECT_EQ(sl.k_slabs.size(), 30u);
  EXPECT_EQ(sl.v_slabs.size(), 30u);
  EXPECT_EQ(KvCache::Impl::allocated_pages(sl), 104u);
  for (const bool keys : {true, false}) {
    const size_t bytes = m.head_bytes(keys);
    const auto& slabs = keys ? sl.k_slabs : sl.v_slabs;
    for (size_t p = 0; p < pages; ++p) {
      const SlabSpot at = slab_spot(p);
      for (int h = 0; h < o.n_kv_heads; ++h) {
        const uint8_t* region = m.region(sl, keys, p, h);
        // (The slab's last page may not be in use yet; its regions are allocated all the same.)
        const uint8_t* expected = at.index > 0 ? m.region(sl, keys, p - 1, h) + bytes
                                  : h > 0      ? m.region(sl, keys, p + at.pages - 1, h - 1) + bytes
                                               : slabs[at.slab].get();
        EXPECT_LE(static_cast<size_t>(region - slabs[at.slab].get()) + bytes,
                  at.pages * o.n_kv_heads * bytes);
        EXPECT_EQ(region, expected)
            << (keys ? "keys" : "values") << ", page " << p << ", head " << h;
      }
    }
  }
}

// Appending one token at a time across 100+ pages stores the same bytes as one bulk append, and
// every token reads back the same, at every step (the newest coded token) and at the end (each
// token alone and all at once).
TEST(CacheSlabs, TokenByTokenAppendsReadBackAsABulkAppend) {
  for (const char* codec : {"paper", "f16", "q4_0"}) {
    SCOPED_TRACE(codec);
    KvCacheOptions o = slab_options(codec, codec, 2);
    o.sink_tokens = 3;
    o.recent_tokens = 5;
    KvCache bulk(o), single(o);
    const SequenceId a = bulk.add_sequence(), b = single.add_sequence();
    const size_t n = 101 * 32 + 17, row = 2 * 64;
    const auto data = token_data(n, o.n_kv_heads, o.head_dim, 8);
    bulk.append(a, 0, data.k.data(), data.v.data(), n);
    const SequenceLayer& y = single.impl().layer(b, 0, "test");
    size_t checked = 0;  // coded tokens already compared
    for (size_t t = 0; t < n; ++t) {
      single.append(b, 0, &data.k[t * row], &data.v[t * row], 1);
      if (y.coded > checked) {
        const size_t last = o.sink_tokens + y.coded - 1;
        ASSERT_EQ(read_range(single, b, last, last + 1), read_range(bulk, a, last, last + 1))
            << "token " << last << " after " << t + 1 << " appends";
        checked = y.coded;
      }
    }
    const SequenceLayer& x = bulk.impl().layer(a, 0, "test");
    ASSERT_EQ(x.pages, y.pages);
    ASSERT_GE(x.pages, 100u);
    for (size_t t = 0; t < n; ++t) {
      ASSERT_EQ(read_range(single, b, t, t + 1), read_range(bulk, a, t, t + 1)) << "token " << t;
    }
    EXPECT_EQ(read_range(single, b, 0, n), read_range(bulk, a, 0, n));
    EXPECT_EQ(single.memory().total_bytes, bulk.memory().total_bytes);
  }
}

// A 1-page sequence holds one page per layer, not a 32-page slab; later pages come in slabs of 1
// (the first 8), 2 (the next 16 pages), 4, ... pages, allocated whole when their first page is
// needed.
TEST(CacheSlabs, MemoryGrowsWithTheSlabs) {
  const KvCacheOptions o = slab_options("paper", "paper", 2);
  KvCache cache(o);
  const SequenceId s = cache.add_sequence();
  const size_t page = cache.impl().key_page_bytes() + cache.impl().value_page_bytes();
  EXPECT_EQ(page, 2 * 2 * 1024u);  // paper, d = 64, 32 tokens: 1024 B per head region
  const auto data = token_data(32 * 40, o.n_kv_heads, o.head_dim, 4);
  const size_t row = 2 * 64;
  size_t appended = 0;
  // (pages in use, pages allocated, slabs) after appending up to the given page count.
  const struct {
    size_t pages, allocated, slabs;
  } steps[] = {{1, 1, 1},    {8, 8, 8},    {9, 10, 9},  {10, 10, 9},
               {24, 24, 16}, {25, 28, 17}, {40, 40, 20}};
  for (const auto& step : steps) {
    const size_t tokens = step.pages * 32;
    cache.append(s, 0, &data.k[appended * row], &data.v[appended * row], tokens - appended);
    appended = tokens;
    ASSERT_EQ(cache.impl().layer(s, 0, "test").pages, step.pages);
    // No sink, no recent window: every token is in a page and the tail holds nothing.
    EXPECT_EQ(cache.memory().total_bytes,
              step.allocated * page + 2 * step.slabs * sizeof(PageBuffer))
        << step.pages << " pages";
  }
}

}  // namespace
}  // namespace polarquant
