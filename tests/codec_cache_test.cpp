// Peer codecs inside the KV cache: appending in bulk or token by token stores the same thing, and
// what the cache reads back is each KV head's codec round trip (KIVI keys: whole 32-token groups,
// the partial group still in full precision, for the values of those tokens too).
#include <gtest/gtest.h>

#include <polarquant/codec.h>
#include <polarquant/codec_pair.h>
#include <polarquant/kv_cache.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "core/random.h"

namespace polarquant {
namespace {

constexpr int kDim = 64, kHeads = 2;
constexpr size_t kTokens = 70;  // two full KIVI key groups and 6 tokens of a third

class PeerCodecInCache : public ::testing::TestWithParam<std::string> {};

TEST_P(PeerCodecInCache, BulkEqualsTokenByTokenAndMatchesTheCodec) {
  const CodecPair pair = codec_pair(GetParam());
  KvCacheOptions options;
  options.n_layers = 1;
  options.n_kv_heads = kHeads;
  options.head_dim = kDim;
  options.key_codec = pair.key;
  options.value_codec = pair.value;
  KvCache cache(options);
  const size_t row = kHeads * kDim;
  Rng rng(12);
  std::vector<float> k(kTokens * row), v(kTokens * row);
  for (float& x : k) x = float(rng.gaussian());
  for (float& x : v) x = float(rng.gaussian());

  const SequenceId bulk = cache.add_sequence(), steps = cache.add_sequence();
  cache.append(bulk, 0, k.data(), v.data(), kTokens);
  for (size_t t = 0; t < kTokens; ++t) cache.append(steps, 0, &k[t * row], &v[t * row], 1);
  std::vector<float> kb(k.size()), vb(v.size()), ks(k.size()), vs(v.size());
  cache.read(bulk, 0, 0, kTokens, kb.data(), vb.data());
  cache.read(steps, 0, 0, kTokens, ks.data(), vs.data());
  EXPECT_EQ(kb, ks);
  EXPECT_EQ(vb, vs);

  // The codec applied to each head's own token sequence, over its whole groups.
  for (const bool keys : {true, false}) {
    const auto codec = make_codec(keys ? pair.key : pair.value, kDim, options.seed);
    const size_t group = size_t(codec->group_size());
    // The cache codes keys and values of a token together, so both wait for a common group.
    const size_t common = std::lcm(group, size_t(make_codec(pair.key, kDim)->group_size()));
    const size_t coded = kTokens / common * common;
    const std::vector<float>& src = keys ? k : v;
    const std::vector<float>& got = keys ? kb : vb;
    for (int h = 0; h < kHeads; ++h) {
      std::vector<float> x(kTokens * kDim), y(coded * kDim);
      for (size_t t = 0; t < kTokens; ++t) {
        std::copy_n(&src[t * row + h * kDim], kDim, &x[t * kDim]);
      }
      std::vector<uint8_t> codes(coded / group * codec->group_bytes());
      codec->encode(x.data(), coded / group, codes.data());
      codec->decode(codes.data(), coded / group, y.data());
      for (size_t t = 0; t < kTokens; ++t) {
        for (int j = 0; j < kDim; ++j) {
          const float cached = got[t * row + h * kDim + j];
          if (t < coded) {
            ASSERT_EQ(cached, y[t * kDim + j]) << (keys ? "key" : "value") << " token " << t;
          } else {  // partial group: full precision (fp16 at worst)
            ASSERT_NEAR(cached, x[t * kDim + j], 1e-3 * (1 + std::fabs(x[t * kDim + j])));
          }
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Pairs, PeerCodecInCache,
                         ::testing::Values("bf16", "q8_0", "q4_0h", "kivi2", "kivi4", "qjl",
                                           "turbo3"));

}  // namespace
}  // namespace polarquant
