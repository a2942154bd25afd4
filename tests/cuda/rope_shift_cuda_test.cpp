// RoPE-aware key centering on the GPU (src/cuda_model/rope_shift.h) against the CPU cache's
// (src/cache/rope_center.h): the per-page key shifts, the per-page score shifts, and decode
// attention with DecodeBatch::page_bias over pages the CPU wrote with those shifts, held to the
// CPU's cache_attention. Skips without a GPU.
#include <gtest/gtest.h>
#include <polarquant/attention.h>

#include <cmath>
#include <tuple>

#include "cache_test_util.h"
#include "cuda/cuda_test_util.h"
#include "cuda_model/rope_shift.h"

namespace polarquant::cuda::test {
namespace {

std::vector<float> inv_freq(int dim) {
  return polarquant::testing::rope_inv_freq(dim);
}

// A CPU cache with RoPE-aware centering holding one sequence per length: keys are Gaussian rows
// plus a per-channel bias, RoPE-rotated (interleaved pairs) at their positions, so the pages'
// shifts are far from zero and differ from page to page.
struct RopeFilled {
  std::unique_ptr<KvCache> cache;
  std::vector<SequenceId> seqs;
  std::vector<float> mean_pre, mean_post;  // per sequence (slot): n_kv x dim each
};

RopeFilled fill(int dim, const std::string& preset, int n_kv, const std::vector<int>& lengths) {
  KvCacheOptions o;
  o.n_kv_heads = n_kv;
  o.head_dim = dim;
  o.key_codec = o.value_codec = preset;
  o.center_keys = true;
  o.key_rope_inv_freq = inv_freq(dim);
  RopeFilled f;
  f.cache = std::make_unique<KvCache>(o);
  const std::vector<float> freq = inv_freq(dim);
  const size_t row = static_cast<size_t>(n_kv) * dim;
  for (size_t s = 0; s < lengths.size(); ++s) {
    const size_t n = static_cast<size_t>(lengths[s]);
    std::vector<float> k = gaussian(n * row, 11 + 2 * s), v = gaussian(n * row, 12 + 2 * s);
    polarquant::testing::rope_biased_keys(k.data(), n, row, dim, freq);
    f.seqs.push_back(f.cache->add_sequence());
    f.cache->append(f.seqs.back(), 0, k.data(), v.data(), n);
    const SequenceLayer& sl = f.cache->impl().layer(f.seqs.back(), 0, "fill");
    f.mean_pre.insert(f.mean_pre.end(), sl.key_mean_pre.begin(), sl.key_mean_pre.end());
    f.mean_post.insert(f.mean_post.end(), sl.key_mean.begin(), sl.key_mean.end());
  }
  return f;
}

// The key shifts: subtract() takes the CPU's page delta off each row, add() puts it back on
// head-major halves; both against RopeCenter::page_delta.
TEST(CudaRopeShift, KeyShiftsAreTheCpuPageDeltas) {
  POLARQUANT_REQUIRE_GPU();
  const int dim = 64, n_kv = 2, kvd = n_kv * dim, n = 100, sink = 4, max_pages = 8;
  const RopeCenter cpu_rc(inv_freq(dim), false, dim, 32, sink);
  RopeCenter rc = cpu_rc;
  rc.cover(max_pages);
  const RopeShift gpu(inv_freq(dim), dim, n_kv, 32, sink, max_pages);
  ASSERT_TRUE(gpu.enabled());
  const std::vector<float> pre = gaussian(2 * kvd, 3), post = gaussian(2 * kvd, 4);
  const std::vector<float> k = gaussian(static_cast<size_t>(n) * kvd, 5);
  std::vector<int32_t> code_positions(n), slots(n);
  for (int r = 0; r < n; ++r) {
    code_positions[r] = 7 * r;  // pages 0..7 (the last clamped: 693 / 32 = 21 > 7)
    slots[r] = r % 2;
  }
  DeviceBuffer<float> kd(k.size()), out(k.size()), pred(pre.size()), postd(post.size());
  DeviceBuffer<int32_t> cpd(n), sd(n);
  kd.upload(k);
  pred.upload(pre);
  postd.upload(post);
  cpd.upload(code_positions);
  sd.upload(slots);
  gpu.subtract(kd.get(), n, cpd.get(), sd.get(), pred.get(), postd.get(), kvd, out.get(), nullptr);
  const std::vector<float> got = out.download();
  std::vector<float> delta(kvd);
  double worst = 0.0, moved = 0.0;
  for (int r = 0; r < n; ++r) {
    const size_t page = std::min<size_t>(code_positions[r] / 32, max_pages - 1);
    rc.page_delta(page, pre.data() + slots[r] * kvd, post.data() + slots[r] * kvd, n_kv,
                  delta.data());
    for (int i = 0; i < kvd; ++i) {
      const float want = k[r * kvd + i] - delta[i];
      worst = std::max(worst, static_cast<double>(std::abs(got[r * kvd + i] - want)));
      moved = std::max(moved, static_cast<double>(std::abs(delta[i])));
    }
  }
  EXPECT_LT(worst, 1e-5);
  EXPECT_GT(moved, 0.5);  // the deltas are not trivially zero
  // add(): head-major halves of slot 1's means, rows at code positions 40.. of one sequence.
  const int rows = 50;
  std::vector<__half> halves(static_cast<size_t>(n_kv) * rows * dim);
  for (size_t i = 0; i < halves.size(); ++i) halves[i] = __float2half(0.01f * (i % 97));
  DeviceBuffer<__half> hd(halves.size());
  hd.upload(halves);
  gpu.add(hd.get(), rows, 40, rows, pred.get() + kvd, postd.get() + kvd, nullptr);
  const std::vector<__half> back = hd.download();
  double worst_add = 0.0;
  for (int h = 0; h < n_kv; ++h) {
    for (int t = 0; t < rows; ++t) {
      rc.page_delta((40 + t) / 32, pre.data() + kvd, post.data() + kvd, n_kv, delta.data());
      for (int j = 0; j < dim; ++j) {
        const size_t at = (static_cast<size_t>(h) * rows + t) * dim + j;
        const float want = __half2float(halves[at]) + delta[h * dim + j];
        worst_add =
            std::max(worst_add, static_cast<double>(std::abs(__half2float(back[at]) - want)));
      }
    }
  }
  EXPECT_LT(worst_add, 2e-2);  // one fp16 rounding of values up to ~10
}

using BiasParam = std::tuple<int, int, std::string>;  // dim, query heads per KV head, preset
class CudaPageBias : public ::testing::TestWithParam<BiasParam> {};

// Decode over pages a RoPE-centered CPU cache wrote, with RopeShift::page_bias's score shifts:
// the CPU's cache_attention (which adds its PageScoreShift per page) within fp16 tile error. The
// bias must matter: without it the output is far off.
TEST_P(CudaPageBias, DecodeWithPageBiasMatchesTheCpuCache) {
  POLARQUANT_REQUIRE_GPU();
  const auto [dim, g, preset] = GetParam();
  const int n_kv = 2, n_q = g * n_kv;
  const std::vector<int> lengths = {1, 33, 777, 3001};
  const RopeFilled f = fill(dim, preset, n_kv, lengths);
  const int batch = static_cast<int>(lengths.size());
  const int max_pages = (3001 + 31) / 32;
  CudaPolarCodec gpu(dynamic_cast<const PolarCodec&>(*f.cache->impl().key_codec), 32, n_kv);
  std::vector<int32_t> table(static_cast<size_t>(batch) * max_pages, 0);
  size_t total = 0;
  for (int len : lengths) total += (len + 31) / 32;
  const std::vector<int32_t> perm = shuffled_ids(total, 9);
  std::vector<uint8_t> kh(perm.size() * gpu.page_bytes()), vh(kh.size());
  size_t next = 0;
  for (int b = 0; b < batch; ++b) {
    std::vector<int32_t> ids;
    for (int i = 0; i < (lengths[b] + 31) / 32; ++i) ids.push_back(perm[next++]);
    std::copy(ids.begin(), ids.end(), table.begin() + static_cast<size_t>(b) * max_pages);
    export_pages(*f.cache, f.seqs[b], true, ids, kh);
    export_pages(*f.cache, f.seqs[b], false, ids, vh);
  }
  const std::vector<float> q = gaussian(static_cast<size_t>(batch) * n_q * dim, 17);
  DeviceBuffer<uint8_t> kp(kh.size()), vp(vh.size());
  kp.upload(kh);
  vp.upload(vh);
  DeviceBuffer<int32_t> tables(table.size()), lens(batch), slots(batch);
  tables.upload(table);
  lens.upload(std::vector<int32_t>(lengths.begin(), lengths.end()));
  slots.upload({0, 1, 2, 3});
  DeviceBuffer<float> qd(q.size()), out(q.size()), pre(f.mean_pre.size()), post(f.mean_post.size());
  qd.upload(q);
  pre.upload(f.mean_pre);
  post.upload(f.mean_post);
  DeviceBuffer<float> bias(table.size() * n_q);
  const RopeShift shift(inv_freq(dim), dim, n_kv, 32, 0, max_pages);
  shift.page_bias(qd.get(), batch, n_q, slots.get(), lens.get(), 3001, pre.get(), post.get(),
                  static_cast<size_t>(n_kv) * dim, max_pages, bias.get(), nullptr);
  // The score shifts against the CPU's.
  const std::vector<float> got_bias = bias.download();
  const KvCache::Impl& m = f.cache->impl();
  double bias_err = 0.0, bias_size = 0.0;
  for (int b = 0; b < batch; ++b) {
    for (int h = 0; h < n_q; ++h) {
      const size_t means = (static_cast<size_t>(b) * n_kv + h / g) * dim;
      const PageScoreShift want(m.rope(0), q.data() + (static_cast<size_t>(b) * n_q + h) * dim,
                                f.mean_pre.data() + means, f.mean_post.data() + means);
      for (int pg = 0; pg < (lengths[b] + 31) / 32; ++pg) {
        const float g_bias = got_bias[(static_cast<size_t>(b) * max_pages + pg) * n_q + h];
        bias_err = std::max(bias_err, static_cast<double>(std::abs(g_bias - want(pg))));
        bias_size = std::max(bias_size, static_cast<double>(std::abs(want(pg))));
      }
    }
  }
  EXPECT_LT(bias_err, 1e-3 * std::max(1.0, bias_size));
  EXPECT_GT(bias_size, 1.0);

  DecodeBatch db;
  db.k_pool = kp.get();
  db.v_pool = vp.get();
  db.page_tables = tables.get();
  db.max_pages = max_pages;
  db.lengths = lens.get();
  db.batch = batch;
  db.max_length = 3001;
  db.n_q_heads = n_q;
  DeviceBuffer<uint8_t> ws(decode_workspace_bytes(gpu, db));
  auto nmse_against_cpu = [&](const float* page_bias) {
    db.page_bias = page_bias;
    decode_attention(gpu, db, qd.get(), out.get(), ws.get(), ws.size(), nullptr);
    EXPECT_EQ(cudaSuccess, cudaDeviceSynchronize());
    const std::vector<float> got = out.download();
    double worst = 0.0;
    for (int b = 0; b < batch; ++b) {
      std::vector<float> want(static_cast<size_t>(n_q) * dim);
      cache_attention(*f.cache, f.seqs[b], 0, q.data() + static_cast<size_t>(b) * n_q * dim, 1, n_q,
                      want.data());
      double err = 0.0, ref = 0.0;
      for (size_t i = 0; i < want.size(); ++i) {
        const double d = got[static_cast<size_t>(b) * n_q * dim + i] - want[i];
        err += d * d;
        ref += static_cast<double>(want[i]) * want[i];
      }
      worst = std::max(worst, err / ref);
    }
    return worst;
  };
  const double with = nmse_against_cpu(bias.get()), without = nmse_against_cpu(nullptr);
  std::printf("[ info ] dim %d g %d %s (%s): NMSE vs CPU %.3g with the page bias, %.3g without\n",
              dim, g, preset.c_str(), decode_kernel_name(gpu, n_q), with, without);
  EXPECT_LT(with, 1e-4);
  EXPECT_GT(without, 100 * with);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaPageBias,
                         ::testing::Values(BiasParam{64, 3, "paper"}, BiasParam{128, 16, "paper"},
                                           BiasParam{128, 4, "polar37"},
                                           BiasParam{256, 2, "polar37"},
                                           BiasParam{128, 8, "polar39"}));

}  // namespace
}  // namespace polarquant::cuda::test
