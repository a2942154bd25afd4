// Fused cache attention (every kernel set) against decode-then-attend in double precision.
//
// Tolerance: outputs are convex combinations of value vectors, so the error is measured relative
// to max |v|. The fused path rounds scores, probabilities and accumulators to float (sums of up to
// 5000 terms, with partial sums merged across threads) and the AVX-512 exp is a degree-6 polynomial
// (relative error < 2e-7); the reference decodes the same codes and accumulates in double. A
// float-rounding-level gap of kTolerance * max|v| is allowed.
#include <gtest/gtest.h>
#include <polarquant/attention.h>
#include <polarquant/error.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "attention/attention_internal.h"
#include "cache_test_util.h"

namespace polarquant {
namespace {

using testing::gaussian;
using testing::token_data;

constexpr float kTolerance = 2e-5f;
// The AVX2 set scores `paper` keys from int8 tables (docs/BENCHMARKS.md 2.5.4; since 2.5.7 also
// the other allocations of polar_i8_scores_apply: polar37/39/41, polar4kv's keys; each kernel held
// bit for bit to its scalar twin and its precision bounded in attention_avx2_i8_test.cpp): score
// errors of ~1% of the scores' spread, far above float rounding. Against this file's reference
// its outputs moved by up to 1.5% of max|v| at ordinary scores (bound 3%), and by up to 15% with
// the 40x queries of StableWithLargeScores, where the softmax is nearly an argmax and a rounding
// can change which of two close keys wins (bound 30% there: that test is about overflow).
constexpr float kInt8Tolerance = 0.03f, kInt8LargeScoreTolerance = 0.3f;

struct Case {
  std::string key_codec, value_codec;
  int dim, n_kv, group;
  size_t context;
  int sink = 0, recent = 0;
  int page = 32;
  size_t window = 0;  // sliding window (0: none)
};

float max_abs(const std::vector<float>& x) {
  float m = 0.0f;
  for (float v : x) m = std::max(m, std::fabs(v));
  return m;
}

// Fills a cache with `context` tokens (bulk prefix, then a few single appends), then compares
// every kernel set's fused attention of the last `n_queries` tokens with the reference.
void check_case(const Case& c, size_t n_queries = 1, int threads = 1, float q_scale = 1.0f) {
  SCOPED_TRACE(c.key_codec + "/" + c.value_codec + " dim " + std::to_string(c.dim) + " g " +
               std::to_string(c.group) + " context " + std::to_string(c.context) + " threads " +
               std::to_string(threads));
  KvCacheOptions o;
  o.n_layers = 1;
  o.n_kv_heads = c.n_kv;
  o.head_dim = c.dim;
  o.key_codec = c.key_codec;
  o.value_codec = c.value_codec;
  o.page_tokens = c.page;
  o.sink_tokens = c.sink;
  o.recent_tokens = c.recent;
  KvCache cache(o);
  const SequenceId s = cache.add_sequence();
  const size_t row = static_cast<size_t>(c.n_kv) * c.dim;
  const auto data = token_data(c.context, c.n_kv, c.dim, 11 + c.context);
  const size_t bulk = c.context > 3 ? c.context - 3 : c.context;
  cache.append(s, 0, data.k.data(), data.v.data(), bulk);
  for (size_t t = bulk; t < c.context; ++t)
    cache.append(s, 0, &data.k[t * row], &data.v[t * row], 1);

  const int n_q = c.n_kv * c.group;
  const auto q = gaussian(n_queries * n_q * c.dim, 99 + c.dim, q_scale);
  std::vector<float> want(q.size()), got(q.size());
  AttentionOptions ref;
  ref.use_fused = false;
  ref.window = c.window;
  cache_attention(cache, s, 0, q.data(), n_queries, n_q, want.data(), ref);
  const float tol = kTolerance * max_abs(data.v);
  AttentionOptions fused;
  fused.n_threads = threads;
  fused.window = c.window;
  for (const KernelSet* k : available_kernels()) {
    SCOPED_TRACE(k->name);
    std::fill(got.begin(), got.end(), NAN);
    cache_attention_with(*k, cache, s, 0, q.data(), n_queries, n_q, got.data(), fused);
    // polar37, polar39, polar41 keys: the generic integer kernel (level 1 of 4 bits, L >= 3).
    const bool int8_scores =
        k->name == "avx2" && (c.key_codec == "paper" || c.key_codec.rfind("polar", 0) == 0);
    const float int8_tol =
        (q_scale > 1.0f ? kInt8LargeScoreTolerance : kInt8Tolerance) * max_abs(data.v);
    EXPECT_LE(testing::max_abs_diff(got, want), int8_scores ? int8_tol : tol);
  }
}

TEST(AttentionFused, MatchesDecodeThenAttendAcrossShapes) {
  for (const char* codec : {"paper", "f16", "f32"}) {
    for (int dim : {64, 128, 256}) {
      for (int g : {1, 3, 4, 8}) {
        for (size_t context : {1, 2, 31, 32, 33}) {
          check_case({codec, codec, dim, 2, g, context});
        }
      }
    }
  }
}

TEST(AttentionFused, LongContextAndThreads) {
  for (int threads : {1, 2, 3}) {
    check_case({"paper", "paper", 128, 1, 4, 5000}, 1, threads);
    check_case({"f16", "f16", 64, 1, 3, 5000}, 1, threads);
  }
  check_case({"paper", "paper", 64, 1, 8, 5000}, 1, 2);
}

TEST(AttentionFused, MixedRunsCodecsAndConfigs) {
  // Sink and recent windows around the pages, mixed key/value codecs, a generic codec (decoded one
  // page at a time), other PolarQuant allocations (L = 5, 6, 7) and page sizes.
  check_case({"paper", "f16", 128, 2, 4, 300, 4, 16});
  check_case({"f32", "paper", 64, 3, 3, 100, 1, 7, 64});
  check_case({"polar37", "polar39", 128, 2, 4, 200});
  check_case({"polar41", "polar41", 128, 1, 2, 97, 0, 0, 16});
  check_case({"kivi4k", "kivi4v", 64, 2, 4, 150, 0, 20});
  check_case({"q8_0", "turbo4", 64, 2, 2, 70});
}

TEST(AttentionFused, PrefillOverTheCacheIsCausal) {
  check_case({"paper", "paper", 64, 2, 3, 90, 2, 5}, 40);
  check_case({"f16", "f32", 128, 1, 4, 33}, 33);
}

TEST(AttentionFused, SlidingWindowMatchesReference) {
  // Windows that start in the sink, inside a page, on a page boundary and in the recent tail;
  // decode and prefill queries; the generic decoded-page path too.
  for (size_t window : {1, 5, 32, 47, 64, 200}) {
    check_case({"paper", "paper", 256, 1, 4, 300, 4, 16, 32, window}, 1);
    check_case({"paper", "f16", 256, 1, 4, 300, 4, 16, 32, window}, 40, 2);
    check_case({"q8_0", "f32", 64, 2, 2, 130, 0, 0, 16, window}, 7);
  }
}

TEST(AttentionFused, ChunksOfPagesAcrossBoundaries) {
  // run_pages scores, softmaxes and accumulates up to 512 tokens of whole pages at a time: contexts
  // of several chunks, page sizes that do and do not divide the chunk evenly in tokens, windows
  // whose first visible position lies inside a page of a later chunk, and threads splitting the
  // pages so that tasks start inside chunks.
  check_case({"paper", "paper", 128, 1, 4, 1500, 0, 0, 16});
  check_case({"paper", "f16", 64, 2, 3, 1300, 2, 5, 64, 700}, 1, 2);
  check_case({"f16", "paper", 128, 1, 8, 1100, 0, 0, 32, 600}, 3, 3);
  check_case({"q8_0", "f32", 64, 1, 2, 1200, 0, 0, 32, 530});
}

TEST(AttentionFused, SlidingWindowReferenceSeesOnlyTheWindow) {
  // The windowed reference equals plain causal attention over the last `window` keys alone.
  const int n_kv = 1, g = 2, dim = 32;
  const size_t n = 50, window = 9;
  const auto q = gaussian(g * dim, 3);
  const auto kv = token_data(n, n_kv, dim, 4);
  std::vector<float> windowed(q.size()), sliced(q.size());
  reference_attention(q.data(), 1, kv.k.data(), kv.v.data(), n, g, n_kv, dim, 0.2f, windowed.data(),
                      window);
  const size_t off = (n - window) * dim;
  reference_attention(q.data(), 1, kv.k.data() + off, kv.v.data() + off, window, g, n_kv, dim, 0.2f,
                      sliced.data());
  EXPECT_EQ(windowed, sliced);
  std::vector<float> full(q.size());
  reference_attention(q.data(), 1, kv.k.data(), kv.v.data(), n, g, n_kv, dim, 0.2f, full.data());
  EXPECT_GT(testing::max_abs_diff(full, windowed), 1e-3f);
}

TEST(AttentionFused, StableWithLargeScores) {
  // Queries 40x larger: scores in the hundreds; a naive exp would overflow.
  check_case({"paper", "paper", 128, 2, 4, 500}, 1, 2, 40.0f);
  check_case({"f16", "f16", 128, 2, 4, 500}, 1, 1, 40.0f);
}

TEST(AttentionFused, DenseCausalMatchesReference) {
  for (int g : {1, 4}) {
    const int n_kv = 2, dim = 64;
    const size_t n = 130;
    const auto q = gaussian(n * n_kv * g * dim, 5, 2.0f);
    const auto kv = token_data(n, n_kv, dim, 6);
    std::vector<float> want(q.size()), got(q.size());
    reference_attention(q.data(), n, kv.k.data(), kv.v.data(), n, n_kv * g, n_kv, dim, 1.0f / 8.0f,
                        want.data());
    AttentionOptions o;
    o.n_threads = 2;
    dense_causal_attention(q.data(), kv.k.data(), kv.v.data(), n, n_kv * g, n_kv, dim, got.data(),
                           o);
    EXPECT_LE(testing::max_abs_diff(got, want), kTolerance * max_abs(kv.v));
    // Causality: the first query sees only the first value.
    for (int j = 0; j < dim; ++j) EXPECT_NEAR(got[j], kv.v[j], 1e-6f);
  }
}

TEST(AttentionFused, MisuseGivesClearErrors) {
  KvCacheOptions o;
  o.n_kv_heads = 2;
  o.head_dim = 64;
  KvCache cache(o);
  const SequenceId s = cache.add_sequence();
  const auto data = token_data(4, 2, 64, 1);
  cache.append(s, 0, data.k.data(), data.v.data(), 4);
  auto q = gaussian(8 * 6 * 64, 2);
  std::vector<float> out(q.size());
  auto expect = [](ErrorKind kind, const std::string& fragment, auto f) {
    try {
      f();
      ADD_FAILURE() << "no error; expected '" << fragment << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), kind);
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  for (bool fused : {true, false}) {
    AttentionOptions a;
    a.use_fused = fused;
    expect(ErrorKind::kInvalidArgument, "multiple of n_kv_heads",
           [&] { cache_attention(cache, s, 0, q.data(), 1, 3, out.data(), a); });
    expect(ErrorKind::kInvalidArgument, "only 4 tokens",
           [&] { cache_attention(cache, s, 0, q.data(), 5, 2, out.data(), a); });
    expect(ErrorKind::kState, "sequence 7",
           [&] { cache_attention(cache, 7, 0, q.data(), 1, 2, out.data(), a); });
    expect(ErrorKind::kInvalidArgument, "layer 1",
           [&] { cache_attention(cache, s, 1, q.data(), 1, 2, out.data(), a); });
    AttentionOptions bad = a;
    bad.n_threads = -1;
    expect(ErrorKind::kInvalidArgument, "n_threads",
           [&] { cache_attention(cache, s, 0, q.data(), 1, 2, out.data(), bad); });
    bad = a;
    bad.scale = NAN;
    expect(ErrorKind::kInvalidArgument, "scale",
           [&] { cache_attention(cache, s, 0, q.data(), 1, 2, out.data(), bad); });
    q[65] = INFINITY;
    expect(ErrorKind::kInvalidArgument, "head 1, coordinate 1",
           [&] { cache_attention(cache, s, 0, q.data(), 1, 2, out.data(), a); });
    q[65] = 0.0f;
  }
  expect(ErrorKind::kInvalidArgument, "multiple of n_kv_heads", [&] {
    dense_causal_attention(q.data(), data.k.data(), data.v.data(), 4, 3, 2, 64, out.data());
  });
  cache.free_sequence(s);
  expect(ErrorKind::kState, "freed",
         [&] { cache_attention(cache, s, 0, q.data(), 1, 2, out.data()); });
}

}  // namespace
}  // namespace polarquant
