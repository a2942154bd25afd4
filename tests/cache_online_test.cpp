// KvCacheOptions::online_codebooks (the paper's online codebooks): refine_codebook lowers the angle
// error of non-uniform angles, the cache fits per sequence, layer and side at the first append and
// encodes with the fitted codebooks, the fused kernels read those pages like the reference path,
// the fit is deterministic, and bad combinations are refused with clear messages.
#include <gtest/gtest.h>
#include <polarquant/attention.h>
#include <polarquant/codebook.h>
#include <polarquant/error.h>
#include <polarquant/kv_cache.h>
#include <polarquant/polar_codec.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "attention/attention_internal.h"
#include "cache/cache_file.h"
#include "cache/kv_cache_impl.h"
#include "cache_test_util.h"

namespace polarquant {
namespace {

using testing::gaussian;

// Angles of a level concentrated around a few centers (wrapped on the circle at level 1).
std::vector<float> clustered_angles(int level, size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> noise(0.0f, level == 1 ? 0.15f : 0.04f);
  const std::vector<float> centers =
      level == 1 ? std::vector<float>{0.3f, 2.0f, 5.9f} : std::vector<float>{0.25f, 0.4f};
  const float end = static_cast<float>(Codebook::range_end(level));
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    float a = centers[i % centers.size()] + noise(rng);
    if (level == 1) {
      a = std::fmod(a + end, end);
      if (a >= end) a = 0.0f;
    } else {
      a = std::clamp(a, 0.0f, end);
    }
    out[i] = a;
  }
  return out;
}

TEST(OnlineCodebooks, RefineLowersTheErrorOfNonUniformAngles) {
  for (const auto& [level, bits] : {std::pair{1, 4}, std::pair{2, 2}, std::pair{3, 3}}) {
    SCOPED_TRACE("level " + std::to_string(level));
    const std::vector<float> train = clustered_angles(level, 4000, 1);
    const std::vector<float> test = clustered_angles(level, 4000, 2);
    const Codebook analytic = analytic_codebook(level, bits);
    const Codebook fitted = refine_codebook(analytic, train.data(), train.size(), 8);
    const double before = angle_mse(analytic, test.data(), test.size());
    const double after = angle_mse(fitted, test.data(), test.size());
    EXPECT_LT(after, 0.5 * before) << "analytic " << before << ", refined " << after;
    // Deterministic, and no iterations leave the start as it is.
    EXPECT_EQ(refine_codebook(analytic, train.data(), train.size(), 8).centroids(),
              fitted.centroids());
    EXPECT_EQ(refine_codebook(analytic, train.data(), train.size(), 0).centroids(),
              analytic.centroids());
  }
  // Lemma-2 distributed angles: the analytic codebook is already (near) optimal, refining keeps
  // the error where it was.
  const PolarCodec codec(polar_preset("paper", 64));
  const std::vector<float> x = gaussian(2000 * 64, 3);
  std::vector<float> y(x.size()), angles(2000 * 60), radii(2000 * 4);
  codec.rotation().forward(x.data(), y.data(), 2000);
  polar_forward(codec.shape(), y.data(), angles.data(), radii.data(), 2000);
  std::vector<float> level2;
  for (size_t v = 0; v < 2000; ++v) {
    level2.insert(level2.end(), &angles[v * 60 + 32], &angles[v * 60 + 48]);
  }
  const Codebook a2 = analytic_codebook(2, 2);
  const Codebook r2 = refine_codebook(a2, level2.data(), level2.size(), 8);
  EXPECT_LE(angle_mse(r2, level2.data(), level2.size()),
            angle_mse(a2, level2.data(), level2.size()) * (1 + 1e-6));
  // Out-of-range samples are refused, naming the sample.
  const float bad[2] = {0.1f, 2.0f};
  try {
    refine_codebook(a2, bad, 2);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sample 1 = 2.0"), std::string::npos) << e.what();
  }
}

// Rank-one-plus-noise rows (one direction per head, a random sign and scale per token): their
// rotated angles cluster, unlike a Gaussian vector's.
std::vector<float> low_rank_rows(size_t n_tokens, int n_kv, int dim, uint64_t seed) {
  const std::vector<float> dirs = gaussian(static_cast<size_t>(n_kv) * dim, seed);
  const std::vector<float> scale = gaussian(n_tokens * n_kv, seed + 1);
  std::vector<float> x = gaussian(n_tokens * n_kv * dim, seed + 2, 0.05f);
  for (size_t t = 0; t < n_tokens; ++t) {
    for (int h = 0; h < n_kv; ++h) {
      for (int j = 0; j < dim; ++j) {
        x[(t * n_kv + h) * dim + j] += scale[t * n_kv + h] * dirs[h * dim + j];
      }
    }
  }
  return x;
}

KvCacheOptions online_cache(const std::string& key, const std::string& value, int n_layers = 1) {
  KvCacheOptions o;
  o.n_layers = n_layers;
  o.n_kv_heads = 2;
  o.head_dim = 64;
  o.key_codec = key;
  o.value_codec = value;
  o.online_codebooks = true;
  return o;
}

double relative_error(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0.0, energy = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    err += (got[i] - want[i]) * (got[i] - want[i]);
    energy += want[i] * want[i];
  }
  return err / energy;
}

const PolarCodec& polar_of(const std::unique_ptr<Codec>& codec) {
  return dynamic_cast<const PolarCodec&>(*codec);
}

TEST(OnlineCodebooks, FittedPerSequenceLayerAndSideAndUsedForEncoding) {
  const size_t n = 256;
  const auto k0 = low_rank_rows(n, 2, 64, 10), v0 = low_rank_rows(n, 2, 64, 20);
  const auto k1 = low_rank_rows(n, 2, 64, 30);
  KvCacheOptions o = online_cache("paper", "paper", 2);
  KvCache online(o);
  o.online_codebooks = false;
  KvCache analytic(o);
  const SequenceId a = online.add_sequence(), b = online.add_sequence();
  const SequenceId s = analytic.add_sequence();
  online.append(a, 0, k0.data(), v0.data(), n);
  online.append(a, 1, k1.data(), v0.data(), n);
  online.append(b, 0, k1.data(), k0.data(), n);
  analytic.append(s, 0, k0.data(), v0.data(), n);

  const KvCache::Impl& m = online.impl();
  const auto& la0 = m.layer(a, 0, "test");
  ASSERT_TRUE(la0.key_codec && la0.value_codec);
  const auto books = [](const std::unique_ptr<Codec>& c, int level) {
    return polar_of(c).codebooks()[level].centroids();
  };
  // Keys and values, layers and sequences each get their own codebooks; the cache's stay analytic.
  EXPECT_NE(books(la0.key_codec, 0), books(la0.value_codec, 0));
  // (Level 4 takes all of its 2048 angles, no random subsample: the same rows give the same
  // codebook in any layer.)
  EXPECT_NE(books(la0.key_codec, 3), books(m.layer(a, 1, "test").key_codec, 3));
  EXPECT_NE(books(la0.key_codec, 3), books(m.layer(b, 0, "test").key_codec, 3));
  EXPECT_EQ(books(m.layer(a, 1, "test").key_codec, 3), books(m.layer(b, 0, "test").key_codec, 3));
  EXPECT_EQ(polar_of(m.key_codec).codebooks()[0].centroids(), analytic_codebook(1, 4).centroids());
  EXPECT_EQ(&polar_of(la0.key_codec).rotation(), &polar_of(m.key_codec).rotation());

  // The pages decode to what the fitted codec gives (round trip), and better than analytic.
  const size_t row = 2 * 64;
  std::vector<float> kr(n * row), vr(n * row), ka(n * row), va(n * row);
  online.read(a, 0, 0, n, kr.data(), vr.data());
  analytic.read(s, 0, 0, n, ka.data(), va.data());
  std::vector<uint8_t> codes(n * 2 * la0.key_codec->group_bytes());
  std::vector<float> direct(n * row);
  la0.key_codec->encode(k0.data(), n * 2, codes.data());
  la0.key_codec->decode(codes.data(), n * 2, direct.data());
  EXPECT_LE(testing::max_abs_diff(kr, direct), 1e-5f);
  EXPECT_LT(relative_error(kr, k0), 0.85 * relative_error(ka, k0))
      << relative_error(kr, k0) << " vs " << relative_error(ka, k0);
  EXPECT_LT(relative_error(vr, v0), 0.85 * relative_error(va, v0))
      << relative_error(vr, v0) << " vs " << relative_error(va, v0);

  // Later appends (decode) keep the first append's codebooks.
  const std::vector<float> before = books(la0.key_codec, 0);
  online.append(a, 0, k1.data(), v0.data(), 40);
  EXPECT_EQ(books(m.layer(a, 0, "test").key_codec, 0), before);
}

TEST(OnlineCodebooks, DeterministicAndOnlyPolarSidesAreFitted) {
  const size_t n = 100;
  const auto k = low_rank_rows(n, 2, 64, 5), v = low_rank_rows(n, 2, 64, 6);
  auto stored = [&](const KvCacheOptions& o) {
    KvCache cache(o);
    const SequenceId s = cache.add_sequence();
    cache.append(s, 0, k.data(), v.data(), n);
    std::vector<float> kr(k.size()), vr(v.size());
    cache.read(s, 0, 0, n, kr.data(), vr.data());
    kr.insert(kr.end(), vr.begin(), vr.end());
    return kr;
  };
  const KvCacheOptions o = online_cache("paper", "polar-422222");
  EXPECT_EQ(stored(o), stored(o));
  // f16 keys stay exact-ish and unfitted; the PolarQuant values are fitted.
  KvCache mixed(online_cache("f16", "paper"));
  const SequenceId s = mixed.add_sequence();
  mixed.append(s, 0, k.data(), v.data(), n);
  const auto& sl = mixed.impl().layer(s, 0, "test");
  EXPECT_FALSE(sl.key_codec);
  EXPECT_TRUE(sl.value_codec);
}

TEST(OnlineCodebooks, FusedAttentionMatchesTheReference) {
  for (const auto& [key, value] : {std::pair<std::string, std::string>{"paper", "paper"},
                                   {"polar-544444", "polar-422222"},
                                   {"paper", "f16"}}) {
    SCOPED_TRACE(key + "/" + value);
    KvCacheOptions o = online_cache(key, value);
    o.sink_tokens = 3;
    o.center_keys = true;
    KvCache cache(o);
    const SequenceId s = cache.add_sequence();
    const size_t n = 300, row = 2 * 64;
    const auto k = low_rank_rows(n, 2, 64, 40), v = low_rank_rows(n, 2, 64, 41);
    cache.append(s, 0, k.data(), v.data(), n - 40);
    for (size_t t = n - 40; t < n; ++t) cache.append(s, 0, &k[t * row], &v[t * row], 1);
    const int n_q = 2 * 4;
    const auto q = gaussian(3 * n_q * 64, 42);
    std::vector<float> want(q.size()), got(q.size());
    AttentionOptions ref;
    ref.use_fused = false;
    cache_attention(cache, s, 0, q.data(), 3, n_q, want.data(), ref);
    float vmax = 0.0f;
    for (float x : v) vmax = std::max(vmax, std::fabs(x));
    for (const KernelSet* kernels : available_kernels()) {
      SCOPED_TRACE(kernels->name);
      std::fill(got.begin(), got.end(), NAN);
      AttentionOptions fused;
      fused.n_threads = 2;
      cache_attention_with(*kernels, cache, s, 0, q.data(), 3, n_q, got.data(), fused);
      EXPECT_LE(testing::max_abs_diff(got, want), 2e-5f * vmax);
    }
  }
}

TEST(OnlineCodebooks, BadCombinationsGiveClearErrors) {
  auto refused = [](const KvCacheOptions& o, const std::string& words) {
    try {
      KvCache cache(o);
      FAIL() << "no error for " << words;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  };
  refused(online_cache("f16", "kivi4v"), "needs a PolarQuant key or value codec; key codec 'f16'");
  KvCacheOptions o = online_cache("paper", "paper");
  const std::string file = (std::filesystem::temp_directory_path() / "pq_online.pqcb").string();
  std::vector<Codebook> books;
  for (int l = 1; l <= 4; ++l) books.push_back(analytic_codebook(l, l == 1 ? 4 : 2));
  save_codebooks(file, books);
  o.key_codebooks = file;
  refused(o, "cannot be combined with codebook files (key_codebooks '" + file);
  std::filesystem::remove(file);

  // Prompt-cache files refuse online codebooks rather than dropping them.
  KvCache cache(online_cache("paper", "paper"));
  const SequenceId s = cache.add_sequence();
  const auto k = gaussian(40 * 128, 1);
  cache.append(s, 0, k.data(), k.data(), 40);
  CacheOwner owner;
  owner.n_layers = 1;
  owner.n_kv_heads = 2;
  owner.head_dim = 64;
  try {
    serialize_cache_sequence(cache, s, owner, std::vector<int>(40, 1), {});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("do not store online codebooks"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace polarquant
