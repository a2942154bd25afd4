// Query rotation before the split-KV attention and the merge of its partial states after it.
#include <cuda_runtime.h>

#include "cuda/attention_steps.h"
#include "cuda/dispatch.h"

namespace polarquant::cuda {
namespace {

// One query row per block, one output column per thread. D is a compile-time constant so that the
// loop over j is unrolled and its loads of S (L2-resident) are in flight together: a loop of
// dependent load-FMA pairs would take a round trip to L2 per j (11 us per launch at D = 128 under
// Nsight Compute, about the whole decode kernel's time at batch 1).
template <int D>
__global__ void __launch_bounds__(D)
    rotate_query_kernel(const float* q, const float* rotation_t, float q_scale, __half* q_rot) {
  __shared__ float x[D];
  const size_t row = blockIdx.x;
  const int i = threadIdx.x;
  x[i] = q[row * D + i];
  __syncthreads();
  float y = 0.0f;
#pragma unroll 16
  for (int j = 0; j < D; ++j) y += x[j] * rotation_t[j * D + i];
  q_rot[row * D + i] = __float2half_rn(y * q_scale);
}

constexpr int kMergeWarps = 8;

// Block (query head, sequence): merge the splits' partial states (warp w takes splits w, w + 8,
// ...; lanes take columns), normalise, and return to the original domain: out = S^T y.
template <int D>
__global__ void __launch_bounds__(32 * kMergeWarps)
    merge_kernel(int n_kv_heads, int n_q_heads, int g, int parts, const float2* part_ml,
                 const float* part_acc, const float* rotation, float* out, float* lse) {
  __shared__ float red[kMergeWarps][D];
  __shared__ float wl[kMergeWarps], wm[kMergeWarps];
  __shared__ float y[D];
  const int qh = blockIdx.x, b = blockIdx.y;
  const int h = qh / g, row = qh % g;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const size_t first = (static_cast<size_t>(b) * n_kv_heads + h) * parts;
  float m_max = -INFINITY;
  for (int i = threadIdx.x; i < parts; i += blockDim.x) {
    m_max = fmaxf(m_max, part_ml[(first + i) * g + row].x);
  }
  for (int o = 16; o > 0; o >>= 1) m_max = fmaxf(m_max, __shfl_xor_sync(0xffffffffu, m_max, o));
  if (lane == 0) wm[warp] = m_max;
  __syncthreads();
  m_max = wm[0];
  for (int w = 1; w < kMergeWarps; ++w) m_max = fmaxf(m_max, wm[w]);

  constexpr int kCols = D / 32;
  float acc[kCols] = {};
  float total = 0.0f;
  if (m_max != -INFINITY) {
#pragma unroll 4
    for (int i = warp; i < parts; i += kMergeWarps) {
      const float2 ml = part_ml[(first + i) * g + row];
      if (ml.x == -INFINITY) continue;
      const float weight = exp2f(ml.x - m_max);
      total += ml.y * weight;
      const float* a = part_acc + ((first + i) * g + row) * D;
#pragma unroll
      for (int k = 0; k < kCols; ++k) acc[k] += a[lane + 32 * k] * weight;
    }
  }
#pragma unroll
  for (int k = 0; k < kCols; ++k) red[warp][lane + 32 * k] = acc[k];
  if (lane == 0) wl[warp] = total;
  __syncthreads();
  for (int col = threadIdx.x; col < D; col += blockDim.x) {
    float sum = 0.0f, l = 0.0f;
#pragma unroll
    for (int w = 0; w < kMergeWarps; ++w) {
      sum += red[w][col];
      l += wl[w];
    }
    y[col] = l > 0.0f ? sum / l : 0.0f;
    if (col == 0 && lse != nullptr) {
      lse[static_cast<size_t>(b) * n_q_heads + qh] =
          l > 0.0f ? (m_max + log2f(l)) * 0.6931471805599453f : -INFINITY;
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    float x = 0.0f;
#pragma unroll 16
    for (int j = 0; j < D; ++j) x += rotation[j * D + i] * y[j];
    out[(static_cast<size_t>(b) * n_q_heads + qh) * D + i] = x;
  }
}

}  // namespace

void launch_rotate_query(const DeviceCodec& c, const float* q, int rows, float q_scale,
                         __half* q_rot, Stream stream) {
  with_dim(c.dim, [&](auto d) {
    constexpr int D = decltype(d)::value;
    rotate_query_kernel<D><<<rows, D, 0, stream>>>(q, c.rotation_t, q_scale, q_rot);
  });
  check_cuda(cudaGetLastError(), "launch(rotate_query)");
}

void launch_merge(const DeviceCodec& c, int batch, int n_q_heads, int g, int splits,
                  const float2* part_ml, const float* part_acc, float* out, float* lse,
                  Stream stream) {
  with_dim(c.dim, [&](auto d) {
    merge_kernel<decltype(d)::value><<<dim3(n_q_heads, batch), 32 * kMergeWarps, 0, stream>>>(
        c.n_kv_heads, n_q_heads, g, splits, part_ml, part_acc, c.rotation, out, lse);
  });
  check_cuda(cudaGetLastError(), "launch(merge)");
}

}  // namespace polarquant::cuda
