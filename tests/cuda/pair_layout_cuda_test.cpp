// The GPU pairs layout of `paper` and `polar37` (src/cache/pair_layout.h) on the device: the
// encoder writes it directly (the CPU cache's pages converted on the host, byte for byte),
// convert_pages moves pages both ways as the host conversion does, and dequantize reads it exactly.
// The attention over it is tested with the other layouts in polar_cuda_test.cpp
// (CudaPairsAttention).
#include <polarquant/cuda.h>
#include <polarquant/error.h>
#include <polarquant/polar_codec.h>

#include <cstdio>
#include <string>
#include <vector>

#include "cache/pair_layout.h"
#include "cuda/cuda_test_util.h"
#include "cuda/polar_cuda_fixture.h"

namespace polarquant::cuda::test {
namespace {

TEST(CudaPairs, OnlyPaperAndPolar37HaveThePairsLayout) {  // runs without a GPU: checked first
  const PolarConfig paper = polar_preset("paper", 128), other = polar_preset("polar39", 128);
  EXPECT_EQ(PageLayout::kPairs, fastest_page_layout(paper, 32));
  EXPECT_EQ(PageLayout::kPairs, fastest_page_layout(polar_preset("polar37", 64), 32));
  EXPECT_EQ(PageLayout::kHost, fastest_page_layout(paper, 64));
  EXPECT_EQ(PageLayout::kHost, fastest_page_layout(other, 32));
  EXPECT_EQ(2048u, device_head_bytes(paper, 32, PageLayout::kPairs));
  EXPECT_EQ(4096u, device_head_bytes(polar_preset("paper", 256), 32, PageLayout::kPairs));
  try {
    device_head_bytes(other, 32, PageLayout::kPairs);
    FAIL() << "polar39 has no pairs layout";
  } catch (const Error& e) {
    EXPECT_EQ(ErrorKind::kUnsupported, e.kind());
    EXPECT_NE(std::string(e.what()).find("polar39"), std::string::npos) << e.what();
  }
}

constexpr const char* kPresets[] = {"paper", "polar37"};

// The CPU cache's pages of one sequence (host layout, page ids[i] at ids[i] * page bytes).
std::vector<uint8_t> host_pages(const Filled& f, int n_kv, const std::vector<int32_t>& ids) {
  std::vector<uint8_t> pages(ids.size() * key_format(*f.cache).head_bytes() * n_kv);
  export_pages(*f.cache, f.seqs[0], true, ids, pages);
  return pages;
}

TEST(CudaPairs, EncoderWritesTheCpuCachePagesInThePairsLayout) {
  POLARQUANT_REQUIRE_GPU();
  for (const auto& [dim, preset] :
       {std::pair{64, "paper"}, std::pair{128, "paper"}, std::pair{256, "paper"},
        std::pair{64, "polar37"}, std::pair{128, "polar37"}, std::pair{256, "polar37"}}) {
    const int n_kv = 2, n = 203;
    Filled f = fill_cache(dim, preset, n_kv, 32, {n}, 13);
    CudaPolarCodec gpu(key_codec(*f.cache), 32, n_kv, PageLayout::kPairs);
    ASSERT_EQ(PageLayout::kPairs, gpu.layout());
    ASSERT_EQ(pair_layout::region_bytes(dim), gpu.head_bytes());
    const size_t pages = (n + 31) / 32;
    const std::vector<int32_t> ids = shuffled_ids(pages, 3);
    DeviceBuffer<int32_t> table(pages);
    table.upload(ids);
    DeviceBuffer<float> x(f.k[0].size());
    x.upload(f.k[0]);
    DeviceBuffer<uint8_t> pool(pages * gpu.page_bytes()), appended(pages * gpu.page_bytes());
    encode_pieces_and_appends(gpu, x.get(), table.get(), pages, n, n_kv, dim, pool.get(),
                              appended.get());
    CUDA_OK(cudaDeviceSynchronize());
    const std::vector<uint8_t> host = host_pages(f, n_kv, ids);
    std::vector<uint8_t> want(pages * gpu.page_bytes());
    pages_to_pair_layout(key_codec(*f.cache).config(), n_kv, host.data(), want.data(), pages);
    const std::vector<uint8_t> got = pool.download();
    size_t differ = 0;
    for (size_t i = 0; i < got.size(); ++i) differ += got[i] != want[i] ? 1 : 0;
    std::printf(
        "[ info ] %s dim %d: %zu of %zu bytes differ from the CPU cache's converted pages\n",
        preset, dim, differ, got.size());
    EXPECT_EQ(0u, differ) << preset << " dim " << dim;
    EXPECT_TRUE(got == appended.download()) << preset << " dim " << dim << ": appends differ";
  }
}

TEST(CudaPairs, ConvertPagesMatchesTheHostConversionBothWays) {
  POLARQUANT_REQUIRE_GPU();
  for (const char* preset : kPresets) {
    const int dim = std::string(preset) == "paper" ? 256 : 64, n_kv = 3, n = 150;
    Filled f = fill_cache(dim, preset, n_kv, 32, {n}, 17);
    CudaPolarCodec gpu(key_codec(*f.cache), 32, n_kv, PageLayout::kPairs);
    CudaPolarCodec same(key_codec(*f.cache), 32, n_kv, PageLayout::kHost);
    const size_t pages = (n + 31) / 32;
    std::vector<int32_t> ids(pages);
    for (size_t i = 0; i < pages; ++i) ids[i] = static_cast<int32_t>(i);
    const std::vector<uint8_t> host = host_pages(f, n_kv, ids);
    std::vector<uint8_t> want(pages * gpu.page_bytes());
    pages_to_pair_layout(key_codec(*f.cache).config(), n_kv, host.data(), want.data(), pages);
    DeviceBuffer<uint8_t> src(host.size()), pairs(want.size()), back(host.size()),
        copied(host.size());
    src.upload(host);
    convert_pages(gpu, src.get(), pairs.get(), pages, true, nullptr);
    convert_pages(gpu, pairs.get(), back.get(), pages, false, nullptr);
    convert_pages(same, src.get(), copied.get(), pages, true, nullptr);  // kHost: a copy
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_TRUE(want == pairs.download()) << preset << ": host -> pairs differs";
    EXPECT_TRUE(host == back.download()) << preset << ": pairs -> host differs";
    EXPECT_TRUE(host == copied.download()) << preset << ": a kHost codec changed bytes";
  }
}

TEST(CudaPairs, DequantizeReadsThePairsLayoutExactly) {
  POLARQUANT_REQUIRE_GPU();
  for (const char* preset : kPresets) {
    const int dim = 128, n_kv = 3, n = 150, first = 5;
    Filled f = fill_cache(dim, preset, n_kv, 32, {n}, 21);
    CudaPolarCodec gpu(key_codec(*f.cache), 32, n_kv, PageLayout::kPairs);
    const size_t pages = (n + 31) / 32;
    const std::vector<int32_t> ids = shuffled_ids(pages, 5);
    DeviceBuffer<uint8_t> pool(pages * gpu.page_bytes());
    DeviceBuffer<int32_t> table(pages);
    table.upload(ids);
    DeviceBuffer<float> x(f.k[0].size());
    x.upload(f.k[0]);
    encode_prefill(gpu, {pool.get(), table.get()}, 0, n, x.get(), false, nullptr);
    DeviceBuffer<float> out((n - first) * n_kv * dim);
    dequantize(gpu, {pool.get(), table.get()}, first, n - first, out.get(), false, nullptr);
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<float> k(out.size()), v(out.size());
    f.cache->read(f.seqs[0], 0, first, n, k.data(), v.data());
    EXPECT_EQ(k, out.download()) << preset;
  }
}

}  // namespace
}  // namespace polarquant::cuda::test
