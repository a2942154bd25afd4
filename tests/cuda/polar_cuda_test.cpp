// CUDA kernels against the CPU cache, which is the reference: page bytes written by the GPU
// encoder, GPU dequantization of CPU-written pages, and GPU decode attention over CPU-written
// pages against the CPU's cache_attention. Without a GPU every test but the first skips.
#include <polarquant/attention.h>
#include <polarquant/codec_pair.h>
#include <polarquant/cuda.h>
#include <polarquant/error.h>
#include <polarquant/polar_codec.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <tuple>

#include "cache/page_format.h"
#include "cache/pair_layout.h"
#include "cuda/cuda_test_util.h"
#include "cuda/polar_cuda_fixture.h"

namespace polarquant::cuda::test {
namespace {

TEST(CudaPolar, RefusesWhatTheKernelsDoNotSupport) {  // runs without a GPU: checked first
  PolarConfig shallow = polar_preset("paper", 128);
  shallow.levels = 3;
  shallow.bits = {4, 2, 2};
  const auto kind_of = [](auto&& make) {
    try {
      make();
    } catch (const Error& e) {
      return e.kind();
    }
    return ErrorKind::kState;
  };
  EXPECT_EQ(ErrorKind::kUnsupported,
            kind_of([&] { CudaPolarCodec c(PolarCodec(shallow), 32, 1); }));
  EXPECT_EQ(ErrorKind::kUnsupported,
            kind_of([&] { CudaPolarCodec c(PolarCodec(polar_preset("paper", 96)), 32, 1); }));
  EXPECT_EQ(ErrorKind::kUnsupported,
            kind_of([&] { CudaPolarCodec c(PolarCodec(polar_preset("paper", 128)), 16, 1); }));
}

// Codecs of different table sizes share kernel instances: setting up a smaller one after a larger
// one (polar4kv's value codec after its key codec) must leave the larger one's launches valid. The
// shared-memory allowance used to be set outright, so the key codec's encode failed with
// cudaErrorInvalidValue once the value codec was set up.
TEST(CudaPolar, ASmallerCodecSetUpLaterKeepsTheLargerOneWorking) {
  POLARQUANT_REQUIRE_GPU();
  const int dim = 64, n_kv = 2, n = 70, page_tokens = 32;
  Filled big = fill_cache(dim, "polar-544444", n_kv, page_tokens, {n}, 5);
  Filled small = fill_cache(dim, "polar-422222", n_kv, page_tokens, {1}, 6);
  CudaPolarCodec first(key_codec(*big.cache), page_tokens, n_kv);
  CudaPolarCodec second(key_codec(*small.cache), page_tokens, n_kv);
  ASSERT_GT(first.page_bytes(), second.page_bytes());
  // Pages in order (page p at slot p), so the CPU cache's export is the expected pool as it is.
  const size_t pages = (n + page_tokens - 1) / page_tokens;
  std::vector<int32_t> ids(pages);
  for (size_t p = 0; p < pages; ++p) ids[p] = static_cast<int32_t>(p);
  std::vector<uint8_t> want(pages * first.page_bytes());
  export_pages(*big.cache, big.seqs[0], true, ids, want);
  DeviceBuffer<int32_t> device_ids(pages);
  device_ids.upload(ids);
  DeviceBuffer<float> rows(big.k[0].size());
  rows.upload(big.k[0]);
  DeviceBuffer<uint8_t> got(want.size());
  ASSERT_NO_THROW(
      encode_prefill(first, {got.get(), device_ids.get()}, 0, n, rows.get(), false, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_TRUE(want == got.download()) << "GPU pages differ from the CPU cache's bytes";
}

using EncodeParam = std::tuple<int, std::string, int>;  // dim, preset, page_tokens
class CudaEncode : public ::testing::TestWithParam<EncodeParam> {};

// GPU-encoded pages against the CPU cache's: radii and codes identical (same rotation order with
// FMA, same atan2-free boundary tests). Prefill in unaligned pieces and token-by-token appends
// give the same bytes.
TEST_P(CudaEncode, PagesMatchTheCpuCache) {
  POLARQUANT_REQUIRE_GPU();
  const auto [dim, preset, page_tokens] = GetParam();
  const int n_kv = 2, n = 203;
  Filled f = fill_cache(dim, preset, n_kv, page_tokens, {n}, 11);
  CudaPolarCodec gpu(key_codec(*f.cache), page_tokens, n_kv);
  ASSERT_EQ(f.cache->impl().key_page_bytes(), gpu.page_bytes());
  const size_t pages = (n + page_tokens - 1) / page_tokens;
  const std::vector<int32_t> ids = shuffled_ids(pages, 3);
  DeviceBuffer<int32_t> table(pages);
  table.upload(ids);
  DeviceBuffer<float> x(f.k[0].size());
  x.upload(f.k[0]);
  DeviceBuffer<uint8_t> pool(pages * gpu.page_bytes()), pool_append(pages * gpu.page_bytes());
  encode_pieces_and_appends(gpu, x.get(), table.get(), pages, n, n_kv, dim, pool.get(),
                            pool_append.get());
  // S folded into the input (rotated_input: the encoder skips the rotation), and input rows that
  // are not 16-byte aligned (the generic encoder takes them): the same bytes again.
  std::vector<float> y(f.k[0].size()), shifted(f.k[0].size() + 1, 0.0f);
  key_codec(*f.cache).rotation().forward(f.k[0].data(), y.data(), static_cast<size_t>(n) * n_kv);
  std::copy(f.k[0].begin(), f.k[0].end(), shifted.begin() + 1);
  DeviceBuffer<float> x_rotated(y.size()), x_shifted(shifted.size());
  x_rotated.upload(y);
  x_shifted.upload(shifted);
  DeviceBuffer<uint8_t> pool_rotated(pages * gpu.page_bytes());
  DeviceBuffer<uint8_t> pool_shifted(pages * gpu.page_bytes());
  encode_prefill(gpu, {pool_rotated.get(), table.get()}, 0, n, x_rotated.get(), true, nullptr);
  encode_prefill(gpu, {pool_shifted.get(), table.get()}, 0, n, x_shifted.get() + 1, false, nullptr);
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<uint8_t> got = pool.download();
  EXPECT_EQ(got, pool_append.download()) << "prefill and appends wrote different bytes";
  EXPECT_EQ(got, pool_rotated.download()) << "rotated_input wrote different bytes";
  EXPECT_EQ(got, pool_shifted.download()) << "an unaligned input wrote different bytes";

  std::vector<uint8_t> want(got.size());
  export_pages(*f.cache, f.seqs[0], true, ids, want);
  EXPECT_TRUE(want == got) << "GPU pages differ from the CPU cache's bytes";
  const PolarPageFormat& format = key_format(*f.cache);
  const PolarShape& shape = key_codec(*f.cache).shape();
  size_t codes = 0, differ = 0;
  for (size_t p = 0; p < pages; ++p) {
    const size_t valid = std::min<size_t>(page_tokens, n - p * page_tokens);
    for (int h = 0; h < n_kv; ++h) {
      const size_t off = ids[p] * gpu.page_bytes() + h * gpu.head_bytes();
      std::vector<uint8_t> ig(valid * shape.num_angles()), iw(ig.size());
      std::vector<float> rg(valid * shape.num_radii()), rw(rg.size());
      format.unpack(got.data() + off, 0, valid, ig.data(), rg.data());
      format.unpack(want.data() + off, 0, valid, iw.data(), rw.data());
      EXPECT_EQ(rw, rg) << "radii of page " << p << " head " << h;
      codes += ig.size();
      for (size_t i = 0; i < ig.size(); ++i) differ += ig[i] != iw[i] ? 1 : 0;
    }
  }
  std::printf("[ info ] dim %d %s T=%d: %zu of %zu codes differ from the CPU's\n", dim,
              preset.c_str(), page_tokens, differ, codes);
  EXPECT_EQ(0u, differ) << "the GPU encoder must reproduce the CPU's codes";
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaEncode,
    ::testing::Values(EncodeParam{64, "paper", 32}, EncodeParam{128, "paper", 32},
                      EncodeParam{128, "paper", 64}, EncodeParam{128, "polar37", 32},
                      EncodeParam{256, "paper", 32}, EncodeParam{64, "polar41", 32}));

// Four-level codecs with other interleaved widths (8/4/2/1: every width the units encoder packs,
// with its widths read at run time) and fp32 radii: the GPU pages equal PolarPageFormat::store's.
TEST(CudaEncode, EveryInterleavedWidthMatchesTheCpuFormat) {
  POLARQUANT_REQUIRE_GPU();
  PolarConfig config = polar_preset("paper", 64);
  config.bits = {8, 4, 2, 1};
  config.radius = RadiusPrecision::kFp32;
  const PolarCodec codec(config);
  const int n_kv = 2, n = 75, T = 32, dim = 64;
  const PolarPageFormat format(codec, T);
  CudaPolarCodec gpu(codec, T, n_kv);
  ASSERT_EQ(format.head_bytes(), gpu.head_bytes());
  const size_t pages = (n + T - 1) / T, row = static_cast<size_t>(n_kv) * dim;
  const std::vector<float> x = gaussian(n * row, 21);
  std::vector<uint8_t> want(pages * gpu.page_bytes(), 0);
  for (size_t p = 0; p < pages; ++p) {
    const size_t count = std::min<size_t>(T, n - p * T);
    format.store(x.data() + p * T * row, count, n_kv, want.data() + p * gpu.page_bytes(),
                 gpu.head_bytes(), 0);
  }
  std::vector<int32_t> ids(pages);
  for (size_t p = 0; p < pages; ++p) ids[p] = static_cast<int32_t>(p);
  DeviceBuffer<int32_t> table(pages);
  table.upload(ids);
  DeviceBuffer<float> xd(x.size());
  xd.upload(x);
  DeviceBuffer<uint8_t> pool(want.size());
  encode_prefill(gpu, {pool.get(), table.get()}, 0, 40, xd.get(), false, nullptr);
  encode_prefill(gpu, {pool.get(), table.get()}, 40, n - 40, xd.get() + 40 * row, false, nullptr);
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_TRUE(want == pool.download()) << "GPU pages differ from PolarPageFormat::store's";
}

// Dequantizing CPU-written pages: rotated values are bit-identical to dequantize_rotated, and
// the original-domain values to the cache's own read (the same products and sums in order).
TEST(CudaDequantize, MatchesTheCpuCacheExactly) {
  POLARQUANT_REQUIRE_GPU();
  for (const auto& [dim, preset] :
       {std::pair{128, "paper"}, std::pair{64, "polar37"}, std::pair{256, "polar39"}}) {
    const int n_kv = 3, n = 150, first = 5;
    Filled f = fill_cache(dim, preset, n_kv, 32, {n}, 21);
    CudaPolarCodec gpu(key_codec(*f.cache), 32, n_kv);
    const size_t pages = (n + 31) / 32;
    const std::vector<int32_t> ids = shuffled_ids(pages, 5);
    std::vector<uint8_t> host(pages * gpu.page_bytes());
    export_pages(*f.cache, f.seqs[0], true, ids, host);
    DeviceBuffer<uint8_t> pool(host.size());
    pool.upload(host);
    DeviceBuffer<int32_t> table(pages);
    table.upload(ids);
    DeviceBuffer<float> out((n - first) * n_kv * dim), rotated(out.size());
    dequantize(gpu, {pool.get(), table.get()}, first, n - first, out.get(), false, nullptr);
    dequantize(gpu, {pool.get(), table.get()}, first, n - first, rotated.get(), true, nullptr);
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<float> k(out.size()), v(out.size());
    f.cache->read(f.seqs[0], 0, first, n, k.data(), v.data());
    EXPECT_EQ(k, out.download()) << dim << " " << preset;
    // Rotated domain: rotate the CPU's reconstruction forward is not exact, so compare with
    // dequantize_rotated of the unpacked codes instead.
    const PolarCodec& codec = key_codec(*f.cache);
    const PolarShape& shape = codec.shape();
    const std::vector<float> got = rotated.download();
    for (int t = first; t < n; ++t) {
      for (int h = 0; h < n_kv; ++h) {
        const uint8_t* region = host.data() + ids[t / 32] * gpu.page_bytes() + h * gpu.head_bytes();
        std::vector<uint8_t> idx(shape.num_angles());
        std::vector<float> radii(shape.num_radii()), y(dim);
        key_format(*f.cache).unpack(region, t % 32, 1, idx.data(), radii.data());
        codec.dequantize_rotated(idx.data(), radii.data(), 1, y.data());
        const float* g = got.data() + ((t - first) * n_kv + h) * dim;
        ASSERT_EQ(y, std::vector<float>(g, g + dim)) << "token " << t << " head " << h;
      }
    }
  }
}

using AttnParam = std::tuple<int, int, std::string>;  // dim, query heads per KV head, preset
class CudaAttention : public ::testing::TestWithParam<AttnParam> {};

// The kernel decode_attention should pick: a preset silently falling back to a slower kernel (as
// `paper` once did when its layout check missed the region padding) passes every accuracy test.
std::string expected_kernel(const std::string& preset) {
  return preset == "paper"      ? "paper-fragments"
         : preset == "polar37"  ? "polar37-fragments"
         : preset == "polar4kv" ? "tile-wide5-narrow2"
                                : "tile-";
}

// Runs the GPU decode over CPU-written pages of a ragged batch and compares each sequence's
// output with cache_attention. Returns the largest NMSE over the batch.
// With via_graph the decode is captured into a CUDA graph on its own stream and the graph is
// launched twice (the host API enqueues only: no allocation or synchronisation while capturing).
// With `layout` kPairs, each codec that has the pairs layout takes it and its pages are converted
// (pages_to_pair_layout) before the upload.
double attention_nmse(int dim, int g, const std::string& preset, int n_kv,
                      const std::vector<int>& lengths, bool via_graph = false,
                      PageLayout layout = PageLayout::kHost) {
  Filled f = fill_cache(dim, preset, n_kv, 32, lengths, 31);
  // A pair (keys and values of different codecs) gets a codec object per side; one codec serves
  // both otherwise, as in the runtime.
  const CodecPair names = codec_pair(preset);
  const auto layout_of = [&](const PolarCodec& c) {
    return layout == PageLayout::kPairs ? fastest_page_layout(c.config(), 32) : PageLayout::kHost;
  };
  CudaPolarCodec gpu(key_codec(*f.cache), 32, n_kv, layout_of(key_codec(*f.cache)));
  std::unique_ptr<CudaPolarCodec> values;
  if (names.value != names.key) {
    values = std::make_unique<CudaPolarCodec>(value_codec(*f.cache), 32, n_kv,
                                              layout_of(value_codec(*f.cache)));
  }
  const CudaPolarCodec& gpu_v = values ? *values : gpu;
  const int batch = static_cast<int>(lengths.size());
  int max_len = 0, max_pages = 1;
  size_t total_pages = 0;
  for (int len : lengths) {
    max_len = std::max(max_len, len);
    max_pages = std::max(max_pages, (len + 31) / 32);
    total_pages += (len + 31) / 32;
  }
  const std::vector<int32_t> perm = shuffled_ids(std::max<size_t>(total_pages, 1), 7);
  std::vector<int32_t> table(static_cast<size_t>(batch) * max_pages, 0);
  const KvCache::Impl& m = f.cache->impl();
  std::vector<uint8_t> kh(perm.size() * m.key_format->head_bytes() * n_kv),
      vh(perm.size() * m.value_format->head_bytes() * n_kv);
  size_t next = 0;
  for (int b = 0; b < batch; ++b) {
    std::vector<int32_t> ids;
    for (int i = 0; i < (lengths[b] + 31) / 32; ++i) ids.push_back(perm[next++]);
    std::copy(ids.begin(), ids.end(), table.begin() + static_cast<size_t>(b) * max_pages);
    if (lengths[b] == 0) continue;
    export_pages(*f.cache, f.seqs[b], true, ids, kh);
    export_pages(*f.cache, f.seqs[b], false, ids, vh);
  }
  // Pages of a codec in the pairs layout, as the GPU encoder would have written them.
  const auto to_codec_layout = [&](const CudaPolarCodec& c, const PolarCodec& codec,
                                   std::vector<uint8_t>& pages) {
    if (c.layout() != PageLayout::kPairs) return;
    std::vector<uint8_t> pairs(perm.size() * c.page_bytes());
    pages_to_pair_layout(codec.config(), n_kv, pages.data(), pairs.data(), perm.size());
    pages.swap(pairs);
  };
  to_codec_layout(gpu, key_codec(*f.cache), kh);
  to_codec_layout(gpu_v, value_codec(*f.cache), vh);
  const int n_q = g * n_kv;
  const std::string kernel = decode_kernel_name(gpu, gpu_v, n_q);
  const std::string want_kernel = gpu.layout() == PageLayout::kPairs && &gpu == &gpu_v
                                      ? preset + "-pairs"
                                      : expected_kernel(preset);
  EXPECT_EQ(0u, kernel.rfind(want_kernel, 0)) << preset << " ran " << kernel;
  const std::vector<float> q = gaussian(static_cast<size_t>(batch) * n_q * dim, 99);
  DeviceBuffer<uint8_t> kp(kh.size()), vp(vh.size());
  kp.upload(kh);
  vp.upload(vh);
  DeviceBuffer<int32_t> tables(table.size()), lens(lengths.size());
  tables.upload(table);
  lens.upload(std::vector<int32_t>(lengths.begin(), lengths.end()));
  DeviceBuffer<float> qd(q.size()), out(q.size());
  qd.upload(q);
  DecodeBatch db;
  db.k_pool = kp.get();
  db.v_pool = vp.get();
  db.page_tables = tables.get();
  db.max_pages = max_pages;
  db.lengths = lens.get();
  db.batch = batch;
  db.max_length = max_len;
  db.n_q_heads = n_q;
  DeviceBuffer<uint8_t> ws(decode_workspace_bytes(gpu, gpu_v, db));
  if (via_graph) {
    cudaStream_t stream = nullptr;
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    EXPECT_EQ(cudaSuccess, cudaStreamCreate(&stream));
    EXPECT_EQ(cudaSuccess, cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    decode_attention(gpu, gpu_v, db, qd.get(), out.get(), ws.get(), ws.size(), stream);
    EXPECT_EQ(cudaSuccess, cudaStreamEndCapture(stream, &graph));
    EXPECT_EQ(cudaSuccess, cudaGraphInstantiate(&exec, graph, 0));
    EXPECT_EQ(cudaSuccess, cudaMemset(out.get(), 0, out.size() * sizeof(float)));
    for (int i = 0; i < 2; ++i) EXPECT_EQ(cudaSuccess, cudaGraphLaunch(exec, stream));
    EXPECT_EQ(cudaSuccess, cudaStreamSynchronize(stream));
    EXPECT_EQ(cudaSuccess, cudaGraphExecDestroy(exec));
    EXPECT_EQ(cudaSuccess, cudaGraphDestroy(graph));
    EXPECT_EQ(cudaSuccess, cudaStreamDestroy(stream));
  } else {
    decode_attention(gpu, gpu_v, db, qd.get(), out.get(), ws.get(), ws.size(), nullptr);
  }
  EXPECT_EQ(cudaSuccess, cudaDeviceSynchronize());
  const std::vector<float> got = out.download();
  double worst = 0.0;
  for (int b = 0; b < batch; ++b) {
    const float* gb = got.data() + static_cast<size_t>(b) * n_q * dim;
    if (lengths[b] == 0) {
      for (int i = 0; i < n_q * dim; ++i) EXPECT_EQ(0.0f, gb[i]) << "empty sequence " << b;
      continue;
    }
    std::vector<float> want(static_cast<size_t>(n_q) * dim);
    cache_attention(*f.cache, f.seqs[b], 0, q.data() + static_cast<size_t>(b) * n_q * dim, 1, n_q,
                    want.data());
    double err = 0.0, ref = 0.0;
    for (size_t i = 0; i < want.size(); ++i) {
      err += (double(gb[i]) - want[i]) * (double(gb[i]) - want[i]);
      ref += double(want[i]) * want[i];
    }
    worst = std::max(worst, err / ref);
  }
  return worst;
}

// fp16 tiles of K, V, q' and P bound the error: NMSE of the output well under 1e-4 (a wrong
// tile, row or page gives NMSE of order 1).
TEST_P(CudaAttention, RaggedBatchMatchesCpuCacheAttention) {
  POLARQUANT_REQUIRE_GPU();
  const auto [dim, g, preset] = GetParam();
  const double nmse = attention_nmse(dim, g, preset, 2, {0, 1, 31, 33, 64, 777, 3001});
  std::printf("[ info ] dim %d g %d %s: worst NMSE vs CPU %.3g\n", dim, g, preset.c_str(), nmse);
  EXPECT_LT(nmse, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaAttention,
    ::testing::Values(
        AttnParam{64, 1, "paper"}, AttnParam{64, 4, "paper"}, AttnParam{64, 8, "paper"},
        AttnParam{128, 1, "paper"}, AttnParam{128, 4, "paper"}, AttnParam{128, 8, "paper"},
        AttnParam{256, 1, "paper"}, AttnParam{256, 4, "paper"}, AttnParam{256, 8, "paper"},
        AttnParam{128, 16, "paper"}, AttnParam{64, 12, "paper"}, AttnParam{256, 16, "paper"},
        AttnParam{128, 4, "polar37"}, AttnParam{64, 8, "polar37"}, AttnParam{256, 1, "polar37"},
        AttnParam{128, 16, "polar37"}, AttnParam{256, 12, "polar37"}, AttnParam{128, 4, "polar39"},
        AttnParam{128, 16, "polar41"},
        // Keys and values of different codecs: polar4kv (the default pair; SmolLM2's 3 query
        // heads per KV head at d = 64, Gemma 3's 4 at d = 256) and a pair without a compiled
        // decoder pair.
        AttnParam{64, 3, "polar4kv"}, AttnParam{128, 4, "polar4kv"}, AttnParam{256, 4, "polar4kv"},
        AttnParam{128, 16, "polar4kv"}, AttnParam{128, 4, "polar41/paper"}));

// `paper` and `polar37` in the pairs layout (paper_pairs_decode.cuh, polar37_pairs_decode.cuh) at
// every head size and query-head count the fragment kernel takes, and paired with another codec
// (the tile kernel reads the pairs pages through device_common.cuh's readers).
class CudaPairsAttention : public ::testing::TestWithParam<AttnParam> {};
TEST_P(CudaPairsAttention, RaggedBatchMatchesCpuCacheAttention) {
  POLARQUANT_REQUIRE_GPU();
  const auto [dim, g, preset] = GetParam();
  const double nmse =
      attention_nmse(dim, g, preset, 2, {0, 1, 31, 33, 64, 777, 3001}, false, PageLayout::kPairs);
  std::printf("[ info ] pairs layout, dim %d g %d %s: worst NMSE vs CPU %.3g\n", dim, g,
              preset.c_str(), nmse);
  EXPECT_LT(nmse, 1e-4);
}
INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaPairsAttention,
    ::testing::Values(AttnParam{64, 1, "paper"}, AttnParam{64, 8, "paper"},
                      AttnParam{64, 12, "paper"}, AttnParam{128, 1, "paper"},
                      AttnParam{128, 4, "paper"}, AttnParam{128, 16, "paper"},
                      AttnParam{256, 4, "paper"}, AttnParam{256, 16, "paper"},
                      AttnParam{128, 4, "polar37"}, AttnParam{64, 8, "polar37"},
                      AttnParam{256, 1, "polar37"}, AttnParam{128, 16, "polar37"},
                      AttnParam{256, 12, "polar37"}, AttnParam{64, 3, "polar37"},
                      AttnParam{128, 4, "polar41/paper"}, AttnParam{128, 4, "paper/polar37"}));

TEST(CudaAttentionLong, Context128kMatchesCpu) {
  POLARQUANT_REQUIRE_GPU();
  for (const PageLayout layout : {PageLayout::kHost, PageLayout::kPairs}) {
    const double nmse = attention_nmse(128, 8, "paper", 1, {131072, 65537}, false, layout);
    std::printf("[ info ] 128k context, %s layout: worst NMSE vs CPU %.3g\n",
                layout == PageLayout::kPairs ? "pairs" : "host", nmse);
    EXPECT_LT(nmse, 1e-4);
  }
}

TEST(CudaGraph, DecodeAttentionCapturesAndReplays) {
  POLARQUANT_REQUIRE_GPU();
  const double nmse = attention_nmse(128, 4, "paper", 2, {0, 5, 300}, true);
  std::printf("[ info ] decode attention replayed from a CUDA graph: worst NMSE vs CPU %.3g\n",
              nmse);
  EXPECT_LT(nmse, 1e-4);
}

// A decode step's append captured once and replayed for every token, with the token's position
// and row written into fixed device buffers between launches, writes the eager appends' bytes.
TEST(CudaGraph, EncodeAppendReplaysWithDevicePositions) {
  POLARQUANT_REQUIRE_GPU();
  const int dim = 128, n_kv = 2, n = 70;
  Filled f = fill_cache(dim, "paper", n_kv, 32, {n}, 5);
  CudaPolarCodec gpu(key_codec(*f.cache), 32, n_kv);
  const size_t pages = (n + 31) / 32, row = static_cast<size_t>(n_kv) * dim;
  const std::vector<int32_t> ids = shuffled_ids(pages, 9);
  DeviceBuffer<int32_t> table(pages), position(1);
  table.upload(ids);
  DeviceBuffer<float> x(f.k[0].size()), token(row);
  x.upload(f.k[0]);
  DeviceBuffer<uint8_t> eager(pages * gpu.page_bytes()), replayed(pages * gpu.page_bytes());
  for (int t = 0; t < n; ++t) {
    position.upload({t});
    encode_append(gpu, eager.get(), table.get(), static_cast<int>(pages), position.get(), 1,
                  x.get() + t * row, false, nullptr);
  }
  cudaStream_t stream = nullptr;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  CUDA_OK(cudaStreamCreate(&stream));
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  encode_append(gpu, replayed.get(), table.get(), static_cast<int>(pages), position.get(), 1,
                token.get(), false, stream);
  CUDA_OK(cudaStreamEndCapture(stream, &graph));
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  for (int t = 0; t < n; ++t) {
    position.upload({t});
    CUDA_OK(
        cudaMemcpy(token.get(), x.get() + t * row, row * sizeof(float), cudaMemcpyDeviceToDevice));
    CUDA_OK(cudaGraphLaunch(exec, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
  }
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));
  CUDA_OK(cudaStreamDestroy(stream));
  EXPECT_EQ(eager.download(), replayed.download());
}

TEST(CudaAttention, RejectsBadShapesAndSmallWorkspace) {
  POLARQUANT_REQUIRE_GPU();
  CudaPolarCodec gpu(PolarCodec(polar_preset("paper", 128)), 32, 4);
  DecodeBatch db;
  DeviceBuffer<uint8_t> pool(gpu.page_bytes());
  DeviceBuffer<int32_t> ints(4);
  db.k_pool = db.v_pool = pool.get();
  db.page_tables = db.lengths = ints.get();
  db.batch = 1;
  db.max_pages = 1;
  db.max_length = 32;
  db.n_q_heads = 6;  // not a multiple of 4
  EXPECT_THROW(decode_workspace_bytes(gpu, db), Error);
  EXPECT_THROW(decode_kernel_name(gpu, 6), Error);
  EXPECT_THROW(decode_kernel_name(gpu, 68), Error);  // 17 per KV head
  EXPECT_STREQ("paper-fragments", decode_kernel_name(gpu, 64));
  // Keys and values of different shapes cannot share pages.
  CudaPolarCodec two_heads(PolarCodec(polar_preset("polar-422222", 128)), 32, 2);
  try {
    decode_kernel_name(gpu, two_heads, 8);
    ADD_FAILURE() << "a key codec of 4 KV heads paired with a value codec of 2 was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(ErrorKind::kInvalidArgument, e.kind());
    EXPECT_NE(std::string(e.what()).find("same shape"), std::string::npos) << e.what();
  }
  db.n_q_heads = 8;
  db.max_length = 33;  // more than one page
  EXPECT_THROW(decode_workspace_bytes(gpu, db), Error);
  db.max_length = 32;
  const size_t need = decode_workspace_bytes(gpu, db);
  DeviceBuffer<float> q(8 * 128), out(8 * 128);
  DeviceBuffer<uint8_t> ws(need - 1);
  EXPECT_THROW(decode_attention(gpu, db, q.get(), out.get(), ws.get(), need - 1, nullptr), Error);
}

// The runtime sizes one workspace at the longest context; every shorter step must fit in it (the
// split count is not monotonic in the length).
TEST(CudaAttention, WorkspaceAtLongestContextServesEveryShorterOne) {
  POLARQUANT_REQUIRE_GPU();
  CudaPolarCodec gpu(PolarCodec(polar_preset("paper", 128)), 32, 8);
  DeviceBuffer<uint8_t> pool(gpu.page_bytes());
  DeviceBuffer<int32_t> ints(4);
  DecodeBatch db;
  db.k_pool = db.v_pool = pool.get();
  db.page_tables = db.lengths = ints.get();
  db.max_pages = 600;
  db.n_q_heads = 32;
  for (int b = 1; b <= 8; ++b) {
    db.batch = b;
    db.max_length = 600 * 32;
    const size_t at_longest = decode_workspace_bytes(gpu, db);
    for (int len = 1; len < 600 * 32; len += 7) {
      db.max_length = len;
      ASSERT_LE(decode_workspace_bytes(gpu, db), at_longest) << "batch " << b << ", length " << len;
    }
  }
}

}  // namespace
}  // namespace polarquant::cuda::test
