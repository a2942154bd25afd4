// The generic encoder (any level count and code width) and the dequantizer. One thread block
// handles 32 consecutive slots of one page and one KV head: with page sizes a multiple of 32 such
// a chunk owns whole 32-bit words of every code field, so blocks never share a word. The encoder
// runs the polar transform level by level in shared memory and gathers each code word from its
// slots; codecs of four or more levels take the faster units encoder instead (encode_units.cu).
// Numerics: quantize.cuh, bit for bit the CPU's.
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
constexpr size_t encode_smem_bytes() {
  return 3 * kChunk * D * sizeof(float) + kChunk * D;  // X, Y, matrix rows, codes
}

template <int D>
__global__ void __launch_bounds__(kThreads)
    encode_kernel(DeviceCodec c, uint8_t* pool, const int32_t* tables, int max_pages,
                  const int32_t* positions, size_t first, size_t n, const float* x, bool rotated) {
  extern __shared__ __align__(16) uint8_t smem[];
  float* X = reinterpret_cast<float*>(smem);
  float* Y = X + kChunk * D;
  float* Ms = Y + kChunk * D;
  uint8_t* codes = reinterpret_cast<uint8_t*>(Ms + kChunk * D);
  float* bcos = reinterpret_cast<float*>(codes + kChunk * D);  // after the codes
  float* bsin = bcos + c.table_entries;
  const ChunkJob job = chunk_job(c, pool, tables, max_pages, positions, first, n, x);
  const QuantTables quant = load_quant_tables(c, bcos, bsin);

  for (int i = threadIdx.x; i < kChunk * D; i += kThreads) {
    const int t = i / D;
    const bool active = t >= job.begin && t < job.end;
    X[i] = active ? job.x[(t - job.begin) * job.x_stride + i % D] : 0.0f;
  }
  __syncthreads();
  float* src = X;  // the rotated rows
  float* dst = Y;
  if (!rotated) {
    rotate_tile<D>(X, c.rotation_t, Ms, Y);
    __syncthreads();
    src = Y;
    dst = X;
  }

  // Polar transform level by level, radii ping-ponging between the two row buffers.
  for (int level = 1; level <= c.levels; ++level) {
    const int count = D >> level;
    const int code_off = D - (D >> (level - 1));
    for (int i = threadIdx.x; i < kChunk * count; i += kThreads) {
      const int t = i / count, j = i % count;
      const float a = src[t * D + 2 * j], b = src[t * D + 2 * j + 1];
      const unsigned code =
          level == 1 ? quantize_level1(c, quant, a, b) : quantize_upper(c, quant, level, a, b);
      codes[t * D + code_off + j] = static_cast<uint8_t>(code);
      dst[t * D + j] = __fsqrt_rn(__fadd_rn(__fmul_rn(a, a), __fmul_rn(b, b)));
    }
    __syncthreads();
    float* tmp = src;
    src = dst;
    dst = tmp;
  }

  // Radii: each token's own 2 or 4 bytes.
  const int num_radii = D >> c.levels;
  for (int i = threadIdx.x; i < kChunk * num_radii; i += kThreads) {
    const int t = i / num_radii, b = i % num_radii;
    if (t < job.begin || t >= job.end) continue;
    const float r = src[t * D + b];
    uint8_t* p = job.region + c.radii_offset +
                 (static_cast<uint32_t>(b) * c.page_tokens + job.slot0 + t) * c.radius_bytes;
    if (c.radius_kind == 2) {
      *reinterpret_cast<float*>(p) = r;
    } else if (c.radius_kind == 0) {
      *reinterpret_cast<__half*>(p) = __float2half_rn(r);
    } else {
      *reinterpret_cast<__nv_bfloat16*>(p) = __float2bfloat16_rn(r);
    }
  }

  // Codes: one 32-bit word of one field per iteration, OR-ed into the page.
  int total = 0;
  for (int l = 1; l <= c.levels; ++l) total += (D >> l) * c.bits[l - 1];
  for (int i = threadIdx.x; i < total; i += kThreads) {
    int level = 1, rest = i;
    while (rest >= (D >> level) * c.bits[level - 1]) {
      rest -= (D >> level) * c.bits[level - 1];
      ++level;
    }
    const int b = c.bits[level - 1];
    const int node = rest / b, w = rest % b;
    const int code_off = D - (D >> (level - 1));
    unsigned value = 0;
    // Slots that can own bits of this word: its 16-slot group when codes are interleaved, the
    // slots around it when they are packed in order.
    const bool interleaved = b == 1 || b == 2 || b == 4 || b == 8;
    const int lo = interleaved ? (32 * w) / (16 * b) * 16 : (32 * w) / b;
    const int hi = interleaved ? lo + 16 : min(kChunk, (32 * w + 31) / b + 1);
    for (int s = max(lo, job.begin); s < min(hi, job.end); ++s) {  // chunk-local slots
      const int shift = code_bit(s, b) - 32 * w;
      const unsigned code = codes[s * D + code_off + node];
      if (shift >= 0 && shift < 32) value |= code << shift;
      if (shift < 0 && shift > -b) value |= code >> (-shift);
    }
    if (value == 0) continue;
    uint32_t* word =
        reinterpret_cast<uint32_t*>(job.region + c.level_offset[level - 1] +
                                    static_cast<uint32_t>(node) * c.field_bytes[level - 1] +
                                    (job.slot0 * b) / 8) +
        w;
    // No other block touches this word; the atomic is a fire-and-forget reduction (RED.OR), so
    // the thread does not wait for the read of a read-modify-write.
    atomicOr(word, value);
  }
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
void launch_encode(const CudaPolarCodec& codec, uint8_t* pool, const int32_t* tables, int max_pages,
                   const int32_t* positions, size_t first, size_t n, int jobs, const float* x,
                   bool rotated, Stream stream) {
  if (launch_encode_units(codec, pool, tables, max_pages, positions, first, n, jobs, x, rotated,
                          stream)) {
    return;  // four or more levels, aligned rows: encode_units.cu
  }
  const DeviceCodec& c = codec.device();
  const dim3 grid(jobs, codec.n_kv_heads());
  const size_t smem = encode_smem_bytes<D>() + 2 * c.table_entries * sizeof(float);
  check_cuda(cudaFuncSetAttribute(encode_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(smem)),
             "cudaFuncSetAttribute(encode)");
  encode_kernel<D><<<grid, kThreads, smem, stream>>>(c, pool, tables, max_pages, positions, first,
                                                     n, x, rotated);
  check_cuda(cudaGetLastError(), "launch(encode)");
}

template <int D>
void launch_dequantize(const CudaPolarCodec& codec, const SequencePages& pages, size_t first,
                       size_t n, float* out, bool rotated, Stream stream) {
  constexpr size_t smem = encode_smem_bytes<D>();
  check_cuda(cudaFuncSetAttribute(dequantize_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(smem)),
             "cudaFuncSetAttribute(dequantize)");
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

void encode_prefill(const CudaPolarCodec& codec, const SequencePages& pages, size_t first, size_t n,
                    const float* x, bool rotated_input, Stream stream) {
  if (n == 0) return;
  check_pages(pages, x, "encode_prefill");
  const int jobs = static_cast<int>((first + n - 1) / kChunk - first / kChunk + 1);
  with_dim(codec.dim(), [&](auto d) {
    launch_encode<decltype(d)::value>(codec, pages.pool, pages.page_table, 0, nullptr, first, n,
                                      jobs, x, rotated_input, stream);
  });
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
  with_dim(codec.dim(), [&](auto d) {
    launch_encode<decltype(d)::value>(codec, pool, page_tables, max_pages, positions, 0, 1, batch,
                                      x, rotated_input, stream);
  });
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
