// The full-precision windows of the GPU cache (kv_window.h): stores, the overlay for dense
// attention, and the decode attention over the window merged with the attention over the codes.
#include "cuda_model/kv_window.h"

#include <polarquant/error.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "cuda_model/device_buffer.h"

namespace polarquant::cuda {

namespace {

constexpr int kThreads = 128;

__device__ __forceinline__ int window_row(const WindowLayout& w, long p) {
  return p < w.sink ? static_cast<int>(p) : w.sink + static_cast<int>((p - w.sink) % w.recent);
}

__device__ __forceinline__ size_t row_offset(const WindowLayout& w, int slot, int layer, int row) {
  return ((static_cast<size_t>(slot) * w.n_layers + layer) * w.rows() + row) *
         static_cast<size_t>(w.kv_dim());
}

// Window position i of a sequence of `length` tokens: the sink's, then the recent ones.
__device__ __forceinline__ long window_position(const WindowLayout& w, long length, int i) {
  const long sink = min(length, static_cast<long>(w.sink));
  if (i < sink) return i;
  return max(static_cast<long>(w.sink), length - w.recent) + (i - sink);
}

__device__ __forceinline__ int window_count(const WindowLayout& w, long length) {
  const long sink = min(length, static_cast<long>(w.sink));
  const long from = max(static_cast<long>(w.sink), length - w.recent);
  return static_cast<int>(sink + max(0L, length - from));
}

__global__ void store_kernel(WindowLayout w, __half* win_k, __half* win_v, int layer,
                             const float* k, const float* v, const int32_t* positions,
                             const int32_t* slots, long keep_from) {
  const int r = blockIdx.x;
  const long p = positions[r];
  if (p >= w.sink && (w.recent == 0 || p < keep_from)) return;
  const size_t dst = row_offset(w, slots[r], layer, window_row(w, p));
  const int kvd = w.kv_dim();
  for (int i = threadIdx.x; i < kvd; i += blockDim.x) {
    win_k[dst + i] = __float2half(k[static_cast<size_t>(r) * kvd + i]);
    win_v[dst + i] = __float2half(v[static_cast<size_t>(r) * kvd + i]);
  }
}

__global__ void overlay_kernel(WindowLayout w, const __half* win_k, const __half* win_v, int layer,
                               int slot, long length, size_t stride, __half* k_out, __half* v_out) {
  const int i = blockIdx.x, h = blockIdx.y;
  const long p = window_position(w, length, i);
  const size_t src =
      row_offset(w, slot, layer, window_row(w, p)) + static_cast<size_t>(h) * w.head_dim;
  const size_t dst = (static_cast<size_t>(h) * stride + p) * w.head_dim;
  for (int e = threadIdx.x; e < w.head_dim; e += blockDim.x) {
    k_out[dst + e] = win_k[src + e];
    v_out[dst + e] = win_v[src + e];
  }
}

// Block (query head, sequence): scores of the window rows (a warp per row), softmax, P.V, then the
// merge with the codes' part by their log-sum-exps.
__global__ void __launch_bounds__(kThreads)
    decode_merge_kernel(WindowLayout w, const __half* win_k, const __half* win_v, int layer,
                        const float* q, int n_q_heads, const int32_t* slots, const int32_t* lengths,
                        float scale, const float* lse_codes, float* out) {
  extern __shared__ float smem[];
  float* qs = smem;                 // head_dim
  float* scores = qs + w.head_dim;  // w.rows()
  __shared__ float red[kThreads / 32];
  const int qh = blockIdx.x, b = blockIdx.y;
  const int g = n_q_heads / w.n_kv_heads, h = qh / g;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const long length = lengths[b];
  const int slot = slots[b];
  const int n = window_count(w, length);
  const size_t row = static_cast<size_t>(b) * n_q_heads + qh;
  if (n == 0) return;  // out already holds the codes' attention
  for (int e = threadIdx.x; e < w.head_dim; e += blockDim.x) qs[e] = q[row * w.head_dim + e];
  __syncthreads();
  for (int i = warp; i < n; i += kThreads / 32) {
    const __half* kr = win_k +
                       row_offset(w, slot, layer, window_row(w, window_position(w, length, i))) +
                       static_cast<size_t>(h) * w.head_dim;
    float dot = 0.0f;
    for (int e = lane; e < w.head_dim; e += 32) dot += qs[e] * __half2float(kr[e]);
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    if (lane == 0) scores[i] = dot * scale;
  }
  __syncthreads();
  float mx = -INFINITY;
  for (int i = threadIdx.x; i < n; i += blockDim.x) mx = fmaxf(mx, scores[i]);
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if (lane == 0) red[warp] = mx;
  __syncthreads();
  mx = red[0];
  for (int i = 1; i < kThreads / 32; ++i) mx = fmaxf(mx, red[i]);
  __syncthreads();
  float sum = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    scores[i] = expf(scores[i] - mx);
    sum += scores[i];
  }
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if (lane == 0) red[warp] = sum;
  __syncthreads();
  sum = 0.0f;
  for (int i = 0; i < kThreads / 32; ++i) sum += red[i];
  const float lse_w = mx + logf(sum);
  const float lse_c = lse_codes[row];
  const float m = fmaxf(lse_w, lse_c);
  const float wc = lse_c == -INFINITY ? 0.0f : expf(lse_c - m);
  const float ww = expf(lse_w - m);
  for (int e = threadIdx.x; e < w.head_dim; e += blockDim.x) {
    float acc = 0.0f;
    for (int i = 0; i < n; ++i) {
      const size_t src = row_offset(w, slot, layer, window_row(w, window_position(w, length, i))) +
                         static_cast<size_t>(h) * w.head_dim;
      acc += scores[i] * __half2float(win_v[src + e]);
    }
    float& o = out[row * w.head_dim + e];
    o = (wc * o + ww * acc / sum) / (wc + ww);
  }
}

}  // namespace

void window_store(const WindowLayout& w, __half* win_k, __half* win_v, int layer, const float* k,
                  const float* v, int n, const int32_t* positions, const int32_t* slots,
                  long keep_from, CUstream_st* stream) {
  if (w.empty() || n <= 0) return;
  store_kernel<<<n, kThreads, 0, stream>>>(w, win_k, win_v, layer, k, v, positions, slots,
                                           keep_from);
  check_launch("window_store");
}

void window_overlay(const WindowLayout& w, const __half* win_k, const __half* win_v, int layer,
                    int slot, size_t length, size_t stride, __half* k_out, __half* v_out,
                    CUstream_st* stream) {
  if (w.empty() || length == 0) return;
  const size_t sink = std::min(length, static_cast<size_t>(w.sink));
  const size_t from = std::max(static_cast<size_t>(w.sink),
                               length > static_cast<size_t>(w.recent) ? length - w.recent : 0);
  const size_t count = sink + (length > from ? length - from : 0);
  if (count == 0) return;
  overlay_kernel<<<dim3(static_cast<unsigned>(count), w.n_kv_heads), std::min(w.head_dim, 256), 0,
                   stream>>>(w, win_k, win_v, layer, slot, static_cast<long>(length), stride, k_out,
                             v_out);
  check_launch("window_overlay");
}

void window_decode_merge(const WindowLayout& w, const __half* win_k, const __half* win_v, int layer,
                         const float* q, int batch, int n_q_heads, const int32_t* slots,
                         const int32_t* lengths, float scale, const float* lse_codes, float* out,
                         CUstream_st* stream) {
  if (w.empty() || batch <= 0) return;
  const size_t smem = static_cast<size_t>(w.head_dim + w.rows()) * sizeof(float);
  decode_merge_kernel<<<dim3(n_q_heads, batch), kThreads, smem, stream>>>(
      w, win_k, win_v, layer, q, n_q_heads, slots, lengths, scale, lse_codes, out);
  check_launch("window decode attention");
}

}  // namespace polarquant::cuda
