// A CPU cache filled with random vectors, the reference the CUDA tests hold the GPU to
// (polar_cuda_test.cpp, pair_layout_cuda_test.cpp).
#pragma once

#include <polarquant/codec_pair.h>
#include <polarquant/kv_cache.h>
#include <polarquant/polar_codec.h>

#include <memory>
#include <string>
#include <vector>

#include "cache/page_format.h"
#include "cuda/cuda_test_util.h"

namespace polarquant::cuda::test {

struct Filled {
  std::unique_ptr<KvCache> cache;
  std::vector<SequenceId> seqs;
  std::vector<std::vector<float>> k, v;  // per sequence: len x n_kv x dim
};

// preset: one codec for keys and values, or a pair name ("polar4kv", "KEY/VALUE").
inline Filled fill_cache(int dim, const std::string& preset, int n_kv, int page_tokens,
                         const std::vector<int>& lengths, uint32_t seed) {
  KvCacheOptions opt;
  opt.n_kv_heads = n_kv;
  opt.head_dim = dim;
  const CodecPair pair = codec_pair(preset);
  opt.key_codec = pair.key;
  opt.value_codec = pair.value;
  opt.page_tokens = page_tokens;
  Filled f;
  f.cache = std::make_unique<KvCache>(opt);
  for (size_t i = 0; i < lengths.size(); ++i) {
    const size_t n = static_cast<size_t>(lengths[i]) * n_kv * dim;
    f.seqs.push_back(f.cache->add_sequence());
    f.k.push_back(gaussian(n, seed + 2 * i));
    f.v.push_back(gaussian(n, seed + 2 * i + 1));
    if (lengths[i] > 0) f.cache->append(f.seqs.back(), 0, f.k[i].data(), f.v[i].data(), lengths[i]);
  }
  return f;
}

inline const PolarCodec& key_codec(const KvCache& cache) {
  return dynamic_cast<const PolarCodec&>(*cache.impl().key_codec);
}
inline const PolarCodec& value_codec(const KvCache& cache) {
  return dynamic_cast<const PolarCodec&>(*cache.impl().value_codec);
}
inline const PolarPageFormat& key_format(const KvCache& cache) {
  return dynamic_cast<const PolarPageFormat&>(*cache.impl().key_format);
}

// Encodes one sequence's n rows (x, device, n x n_kv x dim) twice: into `prefilled` in three
// prefill pieces of uneven sizes (n > 101) and into `appended` token by token.
inline void encode_pieces_and_appends(const CudaPolarCodec& gpu, const float* x,
                                      const int32_t* table, size_t pages, int n, int n_kv, int dim,
                                      uint8_t* prefilled, uint8_t* appended) {
  const size_t cuts[] = {0, 37, 101, static_cast<size_t>(n)};
  for (int i = 0; i < 3; ++i) {
    encode_prefill(gpu, {prefilled, table}, cuts[i], cuts[i + 1] - cuts[i],
                   x + cuts[i] * n_kv * dim, false, nullptr);
  }
  DeviceBuffer<int32_t> position(1);
  for (int t = 0; t < n; ++t) {
    position.upload({t});
    encode_append(gpu, appended, table, static_cast<int>(pages), position.get(), 1,
                  x + static_cast<size_t>(t) * n_kv * dim, false, nullptr);
  }
}

}  // namespace polarquant::cuda::test
