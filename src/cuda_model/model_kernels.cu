#include "cuda_model/model_kernels.h"

#include <cuda_runtime.h>

#include <cfloat>

#include "cuda_model/device_buffer.h"

namespace polarquant::cuda {

namespace {

constexpr int kThreads = 256;

unsigned blocks_for(size_t count, int threads = kThreads) {
  return static_cast<unsigned>((count + threads - 1) / threads);
}

__device__ float block_sum(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // shared may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) / 32;
  float total = 0.0f;
  for (int w = 0; w < warps; ++w) total += shared[w];
  return total;
}

__device__ float block_max(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) / 32;
  float m = -FLT_MAX;
  for (int w = 0; w < warps; ++w) m = fmaxf(m, shared[w]);
  return m;
}

__global__ void embed_kernel(const float* table, const int32_t* tokens, int dim, float* x) {
  const float* row = table + static_cast<size_t>(tokens[blockIdx.x]) * dim;
  float* out = x + static_cast<size_t>(blockIdx.x) * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) out[i] = row[i];
}

__global__ void rms_norm_kernel(const float* x, const float* weight, int dim, float eps,
                                __half* out) {
  __shared__ float shared[32];
  const float* row = x + static_cast<size_t>(blockIdx.x) * dim;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += row[i] * row[i];
  ss = block_sum(ss, shared);
  const float scale = rsqrtf(ss / dim + eps);
  __half* o = out + static_cast<size_t>(blockIdx.x) * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x)
    o[i] = __float2half(row[i] * scale * weight[i]);
}

__global__ void rope_kernel(float* x, int n_heads, int head_dim, const int32_t* positions,
                            const float* inv_freq) {
  const int t = blockIdx.x;
  const double pos = positions[t];
  float* row = x + static_cast<size_t>(t) * n_heads * head_dim;
  for (int i = threadIdx.x; i < head_dim / 2; i += blockDim.x) {
    double sd, cd;
    sincos(pos * static_cast<double>(inv_freq[i]), &sd, &cd);
    const float c = static_cast<float>(cd), s = static_cast<float>(sd);
    for (int h = 0; h < n_heads; ++h) {
      float* p = row + h * head_dim + 2 * i;
      const float a = p[0], b = p[1];
      p[0] = a * c - b * s;
      p[1] = a * s + b * c;
    }
  }
}

__global__ void silu_gate_kernel(const float* gate, const float* up, size_t count, __half* out) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = __float2half(g / (1.0f + expf(-g)) * up[i]);
  }
}

__global__ void to_half_kernel(const float* x, size_t count, __half* out) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    out[i] = __float2half(x[i]);
}

__global__ void column_mean_kernel(const float* x, int n, int width, float* mean) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= width) return;
  double s = 0.0;
  for (int t = 0; t < n; ++t) s += x[static_cast<size_t>(t) * width + c];
  mean[c] = static_cast<float>(s / n);
}

__global__ void subtract_rows_kernel(float* x, int n, int width, const float* means,
                                     const int32_t* slots, size_t slot_stride) {
  const size_t count = static_cast<size_t>(n) * width;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t slot = slots != nullptr ? static_cast<size_t>(slots[i / width]) : 0;
    x[i] -= means[slot * slot_stride + i % width];
  }
}

__global__ void head_major_kernel(const float* x, int n, int heads, int dim, size_t stride,
                                  __half* out) {
  const size_t count = static_cast<size_t>(n) * heads * dim;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t e = i % dim, h = (i / dim) % heads, t = i / (static_cast<size_t>(dim) * heads);
    out[(h * stride + t) * dim + e] = __float2half(x[i]);
  }
}

// One block per (row t, head h).
__global__ void causal_softmax_kernel(const float* scores, int n, int keys, size_t ld, size_t first,
                                      float scale, __half* p) {
  __shared__ float shared[32];
  const size_t row = static_cast<size_t>(blockIdx.y) * n + blockIdx.x;
  const float* s = scores + row * ld;
  __half* out = p + row * ld;
  const int valid = static_cast<int>(min(first + blockIdx.x + 1, static_cast<size_t>(keys)));
  float m = -FLT_MAX;
  for (int i = threadIdx.x; i < valid; i += blockDim.x) m = fmaxf(m, s[i] * scale);
  m = block_max(m, shared);
  float sum = 0.0f;
  for (int i = threadIdx.x; i < valid; i += blockDim.x) sum += expf(s[i] * scale - m);
  sum = block_sum(sum, shared);
  const float inv = 1.0f / sum;
  for (int i = threadIdx.x; i < keys; i += blockDim.x)
    out[i] = __float2half(i < valid ? expf(s[i] * scale - m) * inv : 0.0f);
}

__device__ uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

__device__ float unit_random(uint64_t seed, size_t i) {  // [-1, 1)
  const uint64_t r = mix64(seed * 0x9e3779b97f4a7c15ull + i);
  return static_cast<float>(r >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

__global__ void fill_half_kernel(__half* x, size_t count, uint64_t seed, float amp) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    x[i] = __float2half(amp * unit_random(seed, i));
}

__global__ void fill_float_kernel(float* x, size_t count, uint64_t seed, float amp, float offset) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    x[i] = offset + amp * unit_random(seed, i);
}

__global__ void argmax_kernel(const float* logits, int vocab, int32_t* out) {
  __shared__ float best_v[kThreads];
  __shared__ int best_i[kThreads];
  const float* row = logits + static_cast<size_t>(blockIdx.x) * vocab;
  float v = -FLT_MAX;
  int idx = 0;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    if (row[i] > v) {
      v = row[i];
      idx = i;
    }
  }
  best_v[threadIdx.x] = v;
  best_i[threadIdx.x] = idx;
  __syncthreads();
  for (int step = blockDim.x / 2; step > 0; step >>= 1) {
    if (threadIdx.x < step) {
      const float ov = best_v[threadIdx.x + step];
      const int oi = best_i[threadIdx.x + step];
      if (ov > best_v[threadIdx.x] || (ov == best_v[threadIdx.x] && oi < best_i[threadIdx.x])) {
        best_v[threadIdx.x] = ov;
        best_i[threadIdx.x] = oi;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = best_i[0];
}

__global__ void zero_pages_kernel(uint8_t* first_pool, size_t pool_stride, const int32_t* ids,
                                  size_t page_bytes) {
  // blockIdx.x: page, blockIdx.y: pool; 16-byte stores (page_bytes is a multiple of 16).
  uint4* page = reinterpret_cast<uint4*>(first_pool + blockIdx.y * pool_stride +
                                         static_cast<size_t>(ids[blockIdx.x]) * page_bytes);
  for (size_t i = threadIdx.x; i < page_bytes / 16; i += blockDim.x)
    page[i] = make_uint4(0, 0, 0, 0);
}

unsigned grid_for(size_t count) {
  return std::min<unsigned>(blocks_for(count), 65535u * 8);
}

}  // namespace

void embed_rows(const float* table, const int32_t* tokens, int n, int dim, float* x, Stream s) {
  embed_kernel<<<n, kThreads, 0, s>>>(table, tokens, dim, x);
  check_launch("embed_rows");
}

void rms_norm_half(const float* x, const float* weight, int n, int dim, float eps, __half* out,
                   Stream s) {
  rms_norm_kernel<<<n, kThreads, 0, s>>>(x, weight, dim, eps, out);
  check_launch("rms_norm_half");
}

void rope_rows(float* x, int n, int n_heads, int head_dim, const int32_t* positions,
               const float* inv_freq, Stream s) {
  rope_kernel<<<n, 64, 0, s>>>(x, n_heads, head_dim, positions, inv_freq);
  check_launch("rope_rows");
}

void silu_gate_half(const float* gate, const float* up, size_t count, __half* out, Stream s) {
  silu_gate_kernel<<<grid_for(count), kThreads, 0, s>>>(gate, up, count, out);
  check_launch("silu_gate_half");
}

void to_half(const float* x, size_t count, __half* out, Stream s) {
  to_half_kernel<<<grid_for(count), kThreads, 0, s>>>(x, count, out);
  check_launch("to_half");
}

void column_mean(const float* x, int n, int width, float* mean, Stream s) {
  column_mean_kernel<<<blocks_for(width), kThreads, 0, s>>>(x, n, width, mean);
  check_launch("column_mean");
}

void subtract_rows(float* x, int n, int width, const float* means, const int32_t* slots,
                   size_t slot_stride, Stream s) {
  const size_t count = static_cast<size_t>(n) * width;
  subtract_rows_kernel<<<grid_for(count), kThreads, 0, s>>>(x, n, width, means, slots, slot_stride);
  check_launch("subtract_rows");
}

void to_head_major_half(const float* x, int n, int heads, int dim, size_t stride, __half* out,
                        Stream s) {
  const size_t count = static_cast<size_t>(n) * heads * dim;
  head_major_kernel<<<grid_for(count), kThreads, 0, s>>>(x, n, heads, dim, stride, out);
  check_launch("to_head_major_half");
}

void causal_softmax(const float* scores, int heads, int n, int keys, size_t ld, size_t first,
                    float scale, __half* p, Stream s) {
  causal_softmax_kernel<<<dim3(n, heads), kThreads, 0, s>>>(scores, n, keys, ld, first, scale, p);
  check_launch("causal_softmax");
}

void fill_random_half(__half* x, size_t count, uint64_t seed, float amp, Stream s) {
  fill_half_kernel<<<grid_for(count), kThreads, 0, s>>>(x, count, seed, amp);
  check_launch("fill_random_half");
}

void fill_random_float(float* x, size_t count, uint64_t seed, float amp, float offset, Stream s) {
  fill_float_kernel<<<grid_for(count), kThreads, 0, s>>>(x, count, seed, amp, offset);
  check_launch("fill_random_float");
}

void argmax_rows(const float* logits, int rows, int vocab, int32_t* out, Stream s) {
  argmax_kernel<<<rows, kThreads, 0, s>>>(logits, vocab, out);
  check_launch("argmax_rows");
}

void zero_pages(uint8_t* first_pool, size_t pool_stride, int pools, const int32_t* page_ids,
                int count, size_t page_bytes, Stream s) {
  if (count == 0 || pools == 0) return;
  zero_pages_kernel<<<dim3(count, pools), kThreads, 0, s>>>(first_pool, pool_stride, page_ids,
                                                            page_bytes);
  check_launch("zero_pages");
}

}  // namespace polarquant::cuda
