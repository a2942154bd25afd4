// KvCacheOptions::key_codebooks / value_codebooks: PolarQuant codecs in the cache with the angle
// codebooks of a PQCB file (the paper's offline codebooks), and the errors a bad file gets.
#include <gtest/gtest.h>
#include <polarquant/codebook.h>
#include <polarquant/error.h>
#include <polarquant/kv_cache.h>
#include <polarquant/polar_codec.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "cache_test_util.h"

namespace polarquant {
namespace {

KvCacheOptions paper_cache() {
  KvCacheOptions o;
  o.n_layers = 1;
  o.n_kv_heads = 2;
  o.head_dim = 64;
  o.key_codec = o.value_codec = "paper";
  return o;
}

std::vector<float> stored_keys(const KvCacheOptions& o, const std::vector<float>& k, size_t n) {
  KvCache cache(o);
  const SequenceId s = cache.add_sequence();
  cache.append(s, 0, k.data(), k.data(), n);
  std::vector<float> kr(k.size()), vr(k.size());
  cache.read(s, 0, 0, n, kr.data(), vr.data());
  return kr;
}

std::string temp_file(const char* name) {
  return (std::filesystem::temp_directory_path() / name).string();
}

TEST(CacheCodebooks, FileCodebooksAreUsed) {
  const size_t n = 64;
  const std::vector<float> k = testing::gaussian(n * 2 * 64, 5);
  const PolarConfig paper = polar_preset("paper", 64);
  std::vector<Codebook> analytic;
  for (int l = 1; l <= paper.levels; ++l)
    analytic.push_back(analytic_codebook(l, paper.bits[l - 1]));
  const std::string same = temp_file("pq_cb_same.pqcb");
  save_codebooks(same, analytic);
  KvCacheOptions o = paper_cache();
  const std::vector<float> base = stored_keys(o, k, n);
  o.key_codebooks = o.value_codebooks = same;
  EXPECT_EQ(stored_keys(o, k, n), base);  // the analytic codebooks from a file: same codes

  // A level-1 codebook turned by a third of a step stores different keys.
  std::vector<float> turned = analytic[0].centroids();
  for (float& c : turned) c += static_cast<float>(2.0 * M_PI / 16 / 3);
  std::vector<Codebook> other = analytic;
  other[0] = Codebook(1, 4, turned);
  const std::string moved = temp_file("pq_cb_moved.pqcb");
  save_codebooks(moved, other);
  o.key_codebooks = moved;
  const std::vector<float> got = stored_keys(o, k, n);
  EXPECT_NE(got, base);
  double err = 0.0, energy = 0.0;
  for (size_t i = 0; i < k.size(); ++i) {
    err += (got[i] - k[i]) * (got[i] - k[i]);
    energy += k[i] * k[i];
  }
  EXPECT_LT(err / energy, 0.1);  // still a working quantizer
  std::filesystem::remove(same);
  std::filesystem::remove(moved);
}

TEST(CacheCodebooks, BadFilesAndCodecsGiveClearErrors) {
  const PolarConfig p37 = polar_preset("polar37", 64);
  std::vector<Codebook> books;
  for (int l = 1; l <= p37.levels; ++l) books.push_back(analytic_codebook(l, p37.bits[l - 1]));
  const std::string wrong = temp_file("pq_cb_wrong.pqcb");
  save_codebooks(wrong, books);
  KvCacheOptions o = paper_cache();
  o.key_codebooks = wrong;  // 6 levels for a 4-level codec
  try {
    KvCache cache(o);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("do not suit codec 'paper'"), std::string::npos)
        << e.what();
  }
  o = paper_cache();
  o.value_codec = "f16";
  o.value_codebooks = wrong;
  try {
    KvCache cache(o);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is not a PolarQuant codec"), std::string::npos)
        << e.what();
  }
  o = paper_cache();
  o.key_codebooks = temp_file("pq_cb_missing.pqcb");
  EXPECT_THROW(KvCache{o}, Error);
  const std::string junk = temp_file("pq_cb_junk.pqcb");
  {
    std::FILE* f = std::fopen(junk.c_str(), "wb");
    std::fputs("not a codebook file", f);
    std::fclose(f);
  }
  o.key_codebooks = junk;
  try {
    KvCache cache(o);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat);
  }
  std::filesystem::remove(wrong);
  std::filesystem::remove(junk);
}

}  // namespace
}  // namespace polarquant
