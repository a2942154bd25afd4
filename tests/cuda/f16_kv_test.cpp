// The fp16 page cache's decode attention (src/cuda_model/f16_kv.cu) against a plain CPU reference
// in double precision over the same fp16-rounded keys and values: ragged batches under shuffled
// page tables, every head_dim the kernel takes, 1 to 16 query heads per KV head, lengths that end
// inside a tile, and the log-sum-exp output the window merge reads.
#include <polarquant/error.h>

#include <cuda_fp16.h>

#include <cmath>
#include <cstdio>
#include <tuple>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "cuda_model/f16_kv.h"

namespace polarquant::cuda::test {
namespace {

float round_half(float x) {
  return __half2float(__float2half(x));
}

struct Reference {
  std::vector<double> out;  // batch x n_q x dim
  std::vector<double> lse;  // batch x n_q, natural log
};

// k, v: per sequence length x n_kv x dim (already fp16-rounded); q: batch x n_q x dim.
Reference reference_attention(const std::vector<std::vector<float>>& k,
                              const std::vector<std::vector<float>>& v, const std::vector<float>& q,
                              int n_q, int n_kv, int dim) {
  const int g = n_q / n_kv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
  Reference r;
  r.out.assign(q.size(), 0.0);
  r.lse.assign(k.size() * n_q, -INFINITY);
  for (size_t b = 0; b < k.size(); ++b) {
    const size_t len = k[b].size() / (static_cast<size_t>(n_kv) * dim);
    for (int h = 0; h < n_q; ++h) {
      const int kvh = h / g;
      const float* qh = q.data() + (b * n_q + h) * dim;
      std::vector<double> s(len);
      double mx = -INFINITY;
      for (size_t t = 0; t < len; ++t) {
        const float* kt = k[b].data() + (t * n_kv + kvh) * dim;
        double dot = 0.0;
        for (int e = 0; e < dim; ++e) dot += static_cast<double>(qh[e]) * kt[e];
        s[t] = dot * scale;
        mx = std::max(mx, s[t]);
      }
      if (len == 0) continue;
      double sum = 0.0;
      for (size_t t = 0; t < len; ++t) sum += std::exp(s[t] - mx);
      r.lse[b * n_q + h] = mx + std::log(sum);
      double* o = r.out.data() + (b * n_q + h) * dim;
      for (size_t t = 0; t < len; ++t) {
        const double p = std::exp(s[t] - mx) / sum;
        const float* vt = v[b].data() + (t * n_kv + kvh) * dim;
        for (int e = 0; e < dim; ++e) o[e] += p * vt[e];
      }
    }
  }
  return r;
}

using F16Param = std::tuple<int, int>;  // head_dim, query heads per KV head
class F16Decode : public ::testing::TestWithParam<F16Param> {};

TEST_P(F16Decode, RaggedBatchMatchesReference) {
  POLARQUANT_REQUIRE_GPU();
  const auto [dim, g] = GetParam();
  const int n_kv = 2, n_q = n_kv * g, page_tokens = 32;
  const std::vector<int> lengths = {1, 31, 33, 64, 777, 3001};
  const int batch = static_cast<int>(lengths.size());
  int max_len = 0;
  for (int len : lengths) max_len = std::max(max_len, len);
  const int max_pages = (max_len + page_tokens - 1) / page_tokens;
  const F16Layout lay{dim, n_kv, page_tokens};

  // Pages of all sequences shuffled through one pool; table rows padded with -1 past the end.
  size_t total_pages = 0;
  for (int len : lengths) total_pages += (len + page_tokens - 1) / page_tokens;
  const std::vector<int32_t> ids = shuffled_ids(total_pages, 9);
  std::vector<int32_t> tables(static_cast<size_t>(batch) * max_pages, -1);
  DeviceBuffer<uint8_t> kpool(total_pages * lay.page_bytes()), vpool(kpool.size());
  DeviceBuffer<int32_t> dtables(tables.size());
  std::vector<std::vector<float>> k(batch), v(batch);
  size_t next = 0;
  for (int b = 0; b < batch; ++b) {
    const int pages = (lengths[b] + page_tokens - 1) / page_tokens;
    for (int p = 0; p < pages; ++p) tables[static_cast<size_t>(b) * max_pages + p] = ids[next++];
  }
  dtables.upload(tables);
  for (int b = 0; b < batch; ++b) {
    const size_t n = static_cast<size_t>(lengths[b]) * n_kv * dim;
    k[b] = gaussian(n, 100 + 2 * b);
    v[b] = gaussian(n, 101 + 2 * b);
    DeviceBuffer<float> kx(n), vx(n);
    kx.upload(k[b]);
    vx.upload(v[b]);
    const int32_t* row = dtables.get() + static_cast<size_t>(b) * max_pages;
    f16_store(lay, kpool.get(), row, max_pages, nullptr, false, 0, lengths[b], kx.get(), nullptr);
    f16_store(lay, vpool.get(), row, max_pages, nullptr, false, 0, lengths[b], vx.get(), nullptr);
    CUDA_OK(cudaDeviceSynchronize());
    for (float& x : k[b]) x = round_half(x);
    for (float& x : v[b]) x = round_half(x);
  }
  std::vector<float> q = gaussian(static_cast<size_t>(batch) * n_q * dim, 7);
  for (float& x : q) x *= 2.0f;  // peaked softmax: the max tracking matters
  DeviceBuffer<float> dq(q.size()), out(q.size()), lse(static_cast<size_t>(batch) * n_q);
  dq.upload(q);
  DeviceBuffer<int32_t> dlen(lengths.size());
  dlen.upload(std::vector<int32_t>(lengths.begin(), lengths.end()));

  DecodeBatch db;
  db.k_pool = kpool.get();
  db.v_pool = vpool.get();
  db.page_tables = dtables.get();
  db.max_pages = max_pages;
  db.lengths = dlen.get();
  db.batch = batch;
  db.max_length = max_len;
  db.n_q_heads = n_q;
  db.lse = lse.get();
  int sms = 0;
  CUDA_OK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const size_t ws_bytes = f16_decode_workspace_bytes(lay, db, sms);
  DeviceBuffer<uint8_t> ws(ws_bytes);
  f16_decode_attention(lay, db, dq.get(), out.get(), ws.get(), ws_bytes, sms, nullptr);
  CUDA_OK(cudaDeviceSynchronize());

  const Reference want = reference_attention(k, v, q, n_q, n_kv, dim);
  const std::vector<float> got = out.download(), got_lse = lse.download();
  double err = 0.0, ref = 0.0, lse_err = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    err += (got[i] - want.out[i]) * (got[i] - want.out[i]);
    ref += want.out[i] * want.out[i];
  }
  for (size_t i = 0; i < got_lse.size(); ++i)
    lse_err = std::max(lse_err, std::abs(got_lse[i] - want.lse[i]));
  const double nmse = err / ref;
  std::printf(
      "[ info ] f16 decode dim %d g %d: NMSE vs double reference %.3g, max lse error %.3g\n", dim,
      g, nmse, lse_err);
  EXPECT_LT(nmse, 1e-9);
  EXPECT_LT(lse_err, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Shapes, F16Decode,
                         ::testing::Values(F16Param{64, 1}, F16Param{64, 3}, F16Param{128, 4},
                                           F16Param{128, 8}, F16Param{128, 16}, F16Param{256, 1},
                                           F16Param{256, 4}, F16Param{256, 12}));

TEST(F16Decode, RefusesPagesNotWholeTiles) {
  POLARQUANT_REQUIRE_GPU();
  const F16Layout lay{128, 2, 48};
  DecodeBatch db;
  db.batch = 1;
  db.max_length = 10;
  db.n_q_heads = 4;
  EXPECT_THROW(f16_decode_workspace_bytes(lay, db, 132), Error);
}

// One workspace sized at the longest context serves every shorter step (a split count rounded from
// the tile count is not monotonic in the length). Host arithmetic: runs without a GPU too.
TEST(F16Decode, WorkspaceAtLongestContextServesEveryShorterOne) {
  const F16Layout lay{128, 8, 32};
  DecodeBatch db;
  db.n_q_heads = 32;
  for (int sms : {1, 132}) {
    for (int b = 1; b <= 8; ++b) {
      db.batch = b;
      db.max_length = 17408;
      const size_t at_longest = f16_decode_workspace_bytes(lay, db, sms);
      for (int len = 1; len < 17408; len += 3) {
        db.max_length = len;
        ASSERT_LE(f16_decode_workspace_bytes(lay, db, sms), at_longest)
            << "batch " << b << ", length " << len << ", " << sms << " SMs";
      }
    }
  }
}

}  // namespace
}  // namespace polarquant::cuda::test
