// The host side of encoding (encode_prefill, encode_append: the kernel is in encode_units.cu) and
// the dequantizer: one thread block per 32 consecutive slots of one page and one KV head, the
// codes decoded as the CPU's dequantize_rotated does, then the inverse rotation in the CPU's FMA
// order (quantize.cuh): bit for bit the CPU's.
#include <polarquant/cuda.h>
#include <polarquant/error.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "cuda/device_common.cuh"
#include "cuda/dispatch.h"
#include "cuda/encode_units.h"
#include "cuda/quantize.cuh"

namespace polarquant::cuda {
namespace {

using namespace chunk;

template <int D>
constexpr size_t dequantize_smem_bytes() {
  return 3 * kChunk * D * sizeof(float);  // X, Y, matrix rows
}

template <int D>
__global__ void __launch_bounds__(kThreads)
    dequantize_kernel(DeviceCodec c, const uint8_t* pool, const int32_t* table, size_t first,
                      size_t n, float* out, bool rotated) {
  extern __shared__ __align__(16) uint8_t smem[];
  float* X = reinterpret_cast<float*>(smem);
  float* Y = X + kChunk * D;
  float* Ms = Y + kChunk * D;
  const ChunkJob job = chunk_job(c, const_cast<uint8_t*>(pool), table, 0, nullptr, first, n, out);
  for (int i = threadIdx.x; i < kChunk * (D / 16); i += kThreads) {
    const int t = i % kChunk, u = i / kChunk;
    float v[16];
    if (t >= job.begin && t < job.end) {
      decode_unit<0, 0, 0, 0>(c, job.region, c.cos_table, c.sin_table, job.slot0 + t, u, v);
    } else {
#pragma unroll
      for (int k = 0; k < 16; ++k) v[k] = 0.0f;
    }
#pragma unroll
    for (int k = 0; k < 16; ++k) Y[t * D + 16 * u + k] = v[k];
  }
  __syncthreads();
  const float* result = Y;
  if (!rotated) {
    rotate_tile<D>(Y, c.rotation, Ms, X);
    __syncthreads();
    result = X;
  }
  float* dst = const_cast<float*>(job.x);
  for (int i = threadIdx.x; i < kChunk * D; i += kThreads) {
    const int t = i / D;
    if (t >= job.begin && t < job.end) dst[(t - job.begin) * job.x_stride + i % D] = result[i];
  }
}

template <int D>
void launch_dequantize(const CudaPolarCodec& codec, const SequencePages& pages, size_t first,
                       size_t n, float* out, bool rotated, Stream stream) {
  constexpr size_t smem = dequantize_smem_bytes<D>();  // configure_dequantize set the limit
  const int jobs = static_cast<int>((first + n - 1) / kChunk - first / kChunk + 1);
  const dim3 grid(jobs, codec.n_kv_heads());
  dequantize_kernel<D><<<grid, kThreads, smem, stream>>>(codec.device(), pages.pool,
                                                         pages.page_table, first, n, out, rotated);
  check_cuda(cudaGetLastError(), "launch(dequantize)");
}

void check_pages(const SequencePages& pages, const void* data, const char* what) {
  if (pages.pool == nullptr || pages.page_table == nullptr || data == nullptr) {
    throw_invalid(std::string(what) +
                  ": null device pointer (pool, page_table and data are required)");
  }
}

}  // namespace

void configure_dequantize(const DeviceCodec& c) {
  with_dim(c.dim, [&](auto d) {
    constexpr int kD = decltype(d)::value;
    allow_dynamic_smem(dequantize_kernel<kD>, dequantize_smem_bytes<kD>(),
                       "cudaFuncSetAttribute(dequantize)");
  });
}

void encode_prefill(const CudaPolarCodec& codec, const SequencePages& pages, size_t first, size_t n,
                    const float* x, bool rotated_input, Stream stream) {
  if (n == 0) return;
  check_pages(pages, x, "encode_prefill");
  const int jobs = static_cast<int>((first + n - 1) / kChunk - first / kChunk + 1);
  launch_encode_units(codec, pages.pool, pages.page_table, 0, nullptr, first, n, jobs, x,
                      rotated_input, stream);
}

void encode_append(const CudaPolarCodec& codec, uint8_t* pool, const int32_t* page_tables,
                   int max_pages, const int32_t* positions, int batch, const float* x,
                   bool rotated_input, Stream stream) {
  if (batch == 0) return;
  if (batch < 0 || max_pages < 1 || pool == nullptr || page_tables == nullptr ||
      positions == nullptr || x == nullptr) {
    throw_invalid("encode_append: batch " + std::to_string(batch) + ", max_pages " +
                  std::to_string(max_pages) +
                  ": need batch >= 0, max_pages >= 1 and non-null pointers");
  }
  launch_encode_units(codec, pool, page_tables, max_pages, positions, 0, 1, batch, x, rotated_input,
                      stream);
}

void dequantize(const CudaPolarCodec& codec, const SequencePages& pages, size_t first, size_t n,
                float* out, bool rotated_output, Stream stream) {
  if (n == 0) return;
  check_pages(pages, out, "dequantize");
  with_dim(codec.dim(), [&](auto d) {
    launch_dequantize<decltype(d)::value>(codec, pages, first, n, out, rotated_output, stream);
  });
}

}  // namespace polarquant::cuda
