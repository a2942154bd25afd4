#include "cuda_model/rope_shift.h"

#include <polarquant/error.h>

#include <algorithm>
#include <string>

#include "cache/rope_center.h"

namespace polarquant::cuda {
namespace {

constexpr int kThreads = 256;

// delta's two coordinates of pair (a, b) at a page whose middle angle has (cos, sin) = r:
// R mean_pre - mean_post on the pair.
__device__ __forceinline__ float2 pair_delta(const float* pre, const float* post, int2 ab,
                                             float2 r) {
  const float ma = pre[ab.x], mb = pre[ab.y];
  return make_float2(ma * r.x - mb * r.y - post[ab.x], ma * r.y + mb * r.x - post[ab.y]);
}

// One thread per (row, KV head, shifted pair); out already holds k.
__global__ void subtract_kernel(const float* k, int n, int kv_dim, int head_dim, int heads,
                                const int32_t* code_positions, const int32_t* slots,
                                const float* mean_pre, const float* mean_post, size_t slot_stride,
                                const int2* coords, const float2* rot, int pairs, int page_tokens,
                                int max_pages, float* out) {
  const long i = blockIdx.x * static_cast<long>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<long>(n) * heads * pairs) return;
  const int pair = static_cast<int>(i % pairs);
  const int h = static_cast<int>(i / pairs % heads);
  const int r = static_cast<int>(i / (static_cast<long>(pairs) * heads));
  const int page = min(code_positions[r] / page_tokens, max_pages - 1);
  const size_t means =
      static_cast<size_t>(slots[r]) * slot_stride + static_cast<size_t>(h) * head_dim;
  const int2 ab = coords[pair];
  const float2 d = pair_delta(mean_pre + means, mean_post + means, ab,
                              rot[static_cast<size_t>(page) * pairs + pair]);
  const size_t row = static_cast<size_t>(r) * kv_dim + static_cast<size_t>(h) * head_dim;
  out[row + ab.x] = k[row + ab.x] - d.x;
  out[row + ab.y] = k[row + ab.y] - d.y;
}

// One thread per (row, KV head, shifted pair) of head-major halves.
__global__ void add_kernel(__half* k, size_t stride, int head_dim, int heads, size_t code_from,
                           int n, const float* mean_pre, const float* mean_post, const int2* coords,
                           const float2* rot, int pairs, int page_tokens, int max_pages) {
  const long i = blockIdx.x * static_cast<long>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<long>(n) * heads * pairs) return;
  const int pair = static_cast<int>(i % pairs);
  const int h = static_cast<int>(i / pairs % heads);
  const size_t t = code_from + static_cast<size_t>(i / (static_cast<long>(pairs) * heads));
  const int page = min(static_cast<int>(t / page_tokens), max_pages - 1);
  const size_t means = static_cast<size_t>(h) * head_dim;
  const int2 ab = coords[pair];
  const float2 d = pair_delta(mean_pre + means, mean_post + means, ab,
                              rot[static_cast<size_t>(page) * pairs + pair]);
  __half* row = k + (static_cast<size_t>(h) * stride + (t - code_from)) * head_dim;
  row[ab.x] = __float2half(__half2float(row[ab.x]) + d.x);
  row[ab.y] = __float2half(__half2float(row[ab.y]) + d.y);
}

// Block (page chunk, query head, sequence): q . R(angle) mean_pre on the shifted pairs is
// sum_i cos_i c_i + sin_i s_i with c_i = qa ma + qb mb, s_i = qb ma - qa mb (per query head, in
// shared memory), minus q . mean_post on them; then one thread per page.
__global__ void page_bias_kernel(const float* q, int n_q_heads, int g, int head_dim,
                                 const int32_t* slots, const int32_t* code_lengths,
                                 const float* mean_pre, const float* mean_post, size_t slot_stride,
                                 const int2* coords, const float2* rot, int pairs, int page_tokens,
                                 int max_pages, float* bias) {
  extern __shared__ float cs[];  // pairs x (c, s), then the constant
  const int qh = blockIdx.y, b = blockIdx.z;
  const float* qv = q + (static_cast<size_t>(b) * n_q_heads + qh) * head_dim;
  const size_t means =
      static_cast<size_t>(slots[b]) * slot_stride + static_cast<size_t>(qh / g) * head_dim;
  const float* pre = mean_pre + means;
  const float* post = mean_post + means;
  for (int i = threadIdx.x; i < pairs; i += blockDim.x) {
    const int2 ab = coords[i];
    const float qa = qv[ab.x], qb = qv[ab.y], ma = pre[ab.x], mb = pre[ab.y];
    cs[2 * i] = qa * ma + qb * mb;
    cs[2 * i + 1] = qb * ma - qa * mb;
  }
  if (threadIdx.x == 0) {
    float constant = 0.0f;
    for (int i = 0; i < pairs; ++i) {
      const int2 ab = coords[i];
      constant -= qv[ab.x] * post[ab.x] + qv[ab.y] * post[ab.y];
    }
    cs[2 * pairs] = constant;
  }
  __syncthreads();
  const int pages = min((code_lengths[b] + page_tokens - 1) / page_tokens, max_pages);
  const int page = blockIdx.x * blockDim.x + threadIdx.x;
  if (page >= pages) return;
  const float2* r = rot + static_cast<size_t>(page) * pairs;
  float sum = cs[2 * pairs];
  for (int i = 0; i < pairs; ++i) sum += r[i].x * cs[2 * i] + r[i].y * cs[2 * i + 1];
  bias[(static_cast<size_t>(b) * max_pages + page) * n_q_heads + qh] = sum;
}

unsigned blocks(long threads) {
  return static_cast<unsigned>(std::max(1L, (threads + kThreads - 1) / kThreads));
}

}  // namespace

RopeShift::RopeShift(const std::vector<float>& inv_freq, int head_dim, int n_kv_heads,
                     int page_tokens, int sink_tokens, int max_pages)
    : head_dim_(head_dim),
      n_kv_heads_(n_kv_heads),
      page_tokens_(page_tokens),
      max_pages_(max_pages) {
  RopeCenter rc(inv_freq, /*neox=*/false, head_dim, page_tokens, sink_tokens);
  pairs_ = static_cast<int>(rc.pairs());
  if (pairs_ == 0 || max_pages <= 0) {
    pairs_ = 0;
    return;
  }
  rc.cover(static_cast<size_t>(max_pages));
  std::vector<int2> coords(pairs_);
  for (int i = 0; i < pairs_; ++i) coords[i] = make_int2(rc.a(i), rc.b(i));
  std::vector<float2> rot(static_cast<size_t>(max_pages) * pairs_);
  for (size_t p = 0; p < static_cast<size_t>(max_pages); ++p) {
    for (int i = 0; i < pairs_; ++i) rot[p * pairs_ + i] = make_float2(rc.cos(p, i), rc.sin(p, i));
  }
  coords_.allocate(coords.size(), "cudaMalloc(RoPE shift pairs)");
  rot_.allocate(rot.size(), "cudaMalloc(RoPE shift angles)");
  check_cuda(cudaMemcpy(coords_.get(), coords.data(), coords_.bytes(), cudaMemcpyHostToDevice),
             "cudaMemcpy(RoPE shift pairs)");
  check_cuda(cudaMemcpy(rot_.get(), rot.data(), rot_.bytes(), cudaMemcpyHostToDevice),
             "cudaMemcpy(RoPE shift angles)");
}

void RopeShift::subtract(const float* k, int n, const int32_t* code_positions, const int32_t* slots,
                         const float* mean_pre, const float* mean_post, size_t slot_stride,
                         float* out, CUstream_st* stream) const {
  const int kv_dim = n_kv_heads_ * head_dim_;
  check_cuda(cudaMemcpyAsync(out, k, static_cast<size_t>(n) * kv_dim * sizeof(float),
                             cudaMemcpyDeviceToDevice, stream),
             "cudaMemcpyAsync(keys to shift)");
  const long threads = static_cast<long>(n) * n_kv_heads_ * pairs_;
  subtract_kernel<<<blocks(threads), kThreads, 0, stream>>>(
      k, n, kv_dim, head_dim_, n_kv_heads_, code_positions, slots, mean_pre, mean_post, slot_stride,
      coords_.get(), rot_.get(), pairs_, page_tokens_, max_pages_, out);
  check_launch("rope_shift_subtract");
}

void RopeShift::add(__half* k, size_t stride, size_t code_from, int n, const float* mean_pre,
                    const float* mean_post, CUstream_st* stream) const {
  const long threads = static_cast<long>(n) * n_kv_heads_ * pairs_;
  if (threads == 0) return;
  add_kernel<<<blocks(threads), kThreads, 0, stream>>>(
      k, stride, head_dim_, n_kv_heads_, code_from, n, mean_pre, mean_post, coords_.get(),
      rot_.get(), pairs_, page_tokens_, max_pages_);
  check_launch("rope_shift_add");
}

void RopeShift::page_bias(const float* q, int batch, int n_q_heads, const int32_t* slots,
                          const int32_t* code_lengths, int max_code_length, const float* mean_pre,
                          const float* mean_post, size_t slot_stride, int max_pages, float* bias,
                          CUstream_st* stream) const {
  if (max_pages != max_pages_) {
    throw_invalid("RopeShift::page_bias: page tables of " + std::to_string(max_pages) +
                  " pages; the angles cover " + std::to_string(max_pages_));
  }
  const int pages = std::min((max_code_length + page_tokens_ - 1) / page_tokens_, max_pages);
  if (pages <= 0) return;
  const dim3 grid(blocks(pages), n_q_heads, batch);
  const size_t smem = (2 * static_cast<size_t>(pairs_) + 1) * sizeof(float);
  page_bias_kernel<<<grid, kThreads, smem, stream>>>(
      q, n_q_heads, n_q_heads / n_kv_heads_, head_dim_, slots, code_lengths, mean_pre, mean_post,
      slot_stride, coords_.get(), rot_.get(), pairs_, page_tokens_, max_pages, bias);
  check_launch("rope_shift_page_bias");
}

}  // namespace polarquant::cuda
