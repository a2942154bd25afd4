// Encode (rotate + polar transform + quantize + pack into the page layout) and dequantize
// kernels. One thread block handles 32 consecutive slots of one page and one KV head: with page
// sizes a multiple of 32 such a chunk owns whole 32-bit words of every code field, so blocks never
// share a word and the packing needs no atomics.
//
// Numerics follow the CPU bit for bit: the rotation sums x_j * S^T[j] in the CPU's order with one
// fused multiply-add each (as its SIMD path does), radii are sqrt(a*a + b*b) without contraction,
// and codes come from the CPU's atan2-free boundary comparisons with the same float constants.
#include <polarquant/cuda.h>
#include <polarquant/error.h>

#include <cuda_runtime.h>

#include <string>

#include "cuda/device_common.cuh"
#include "cuda/dispatch.h"

namespace polarquant::cuda {
namespace {

constexpr int kChunk = 32;  // slots per block
constexpr int kThreads = 128;

template <int D>
constexpr size_t encode_smem_bytes() {
  return 3 * kChunk * D * sizeof(float) + kChunk * D;  // X, Y, matrix rows, codes
}

// The quantizer's constants, copied to shared memory by each block (at most 8 levels x 256).
struct QuantTables {
  const float* bcos;
  const float* bsin;
  float cos_first, sin_first, cos_last, sin_last;
};

// Y[t][i] = sum_j X[t][j] * M[j][i] for the 32 rows of a chunk: one fused multiply-add per j,
// j ascending, as the CPU's SIMD combine_rows (Highway MulAdd) does.
// M: global, row-major D x D; Ms: shared scratch of 32 x D floats.
template <int D>
__device__ void rotate_tile(const float* X, const float* M, float* Ms, float* Y) {
  constexpr int kGroups = D / 8;  // column groups of 8
  constexpr int kTm = D / 32;     // rows per thread
  const int cg = threadIdx.x % kGroups;
  const int t0 = (threadIdx.x / kGroups) * kTm;
  float acc[kTm][8];
#pragma unroll
  for (int m = 0; m < kTm; ++m)
#pragma unroll
    for (int k = 0; k < 8; ++k) acc[m][k] = 0.0f;
  for (int j0 = 0; j0 < D; j0 += 32) {
    for (int i = threadIdx.x; i < 32 * D / 4; i += kThreads) {
      reinterpret_cast<float4*>(Ms)[i] = reinterpret_cast<const float4*>(M + j0 * D)[i];
    }
    __syncthreads();
#pragma unroll 4
    for (int jj = 0; jj < 32; ++jj) {
      const float4 s0 = reinterpret_cast<const float4*>(Ms + jj * D + cg * 8)[0];
      const float4 s1 = reinterpret_cast<const float4*>(Ms + jj * D + cg * 8)[1];
      const float s[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
#pragma unroll
      for (int m = 0; m < kTm; ++m) {
        const float x = X[(t0 + m) * D + j0 + jj];
#pragma unroll
        for (int k = 0; k < 8; ++k) acc[m][k] = __fmaf_rn(x, s[k], acc[m][k]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int m = 0; m < kTm; ++m)
#pragma unroll
    for (int k = 0; k < 8; ++k) Y[(t0 + m) * D + cg * 8 + k] = acc[m][k];
}

// fb cos(t) - fa sin(t) > 0, i.e. the angle of (fa, fb) lies above boundary t; no contraction,
// as on the CPU.
__device__ __forceinline__ bool above(float fa, float fb, float c, float s) {
  return __fsub_rn(__fmul_rn(fb, c), __fmul_rn(fa, s)) > 0.0f;
}

// PolarCodec::quantize_rotated's level-1 rule: fold the lower half-plane onto the upper, count
// the boundaries below the angle, and settle the wrap-around between the first and last code by
// comparing projections onto their centroids.
__device__ unsigned quantize_level1(const DeviceCodec& c, const QuantTables& t, float a, float b) {
  const int k = 1 << c.bits[0];
  const bool upper = b > 0.0f || (b == 0.0f && a >= 0.0f);
  const float fa = upper ? a : -a, fb = upper ? b : -b;
  const int lo = upper ? 0 : c.level1_upper, hi = upper ? c.level1_upper : k - 1;
  int q = lo;
  for (int i = lo; i < hi; ++i) q += above(fa, fb, t.bcos[i], t.bsin[i]) ? 1 : 0;
  if (q == 0 || q == k - 1) {
    const float first = __fadd_rn(__fmul_rn(a, t.cos_first), __fmul_rn(b, t.sin_first));
    const float last = __fadd_rn(__fmul_rn(a, t.cos_last), __fmul_rn(b, t.sin_last));
    q = first >= last ? 0 : k - 1;
  }
  return static_cast<unsigned>(q);
}

__device__ unsigned quantize_upper(const DeviceCodec& c, const QuantTables& t, int level, float a,
                                   float b) {
  const int off = c.table_offset[level - 1];
  const int nb = (1 << c.bits[level - 1]) - 1;
  int q = 0;
  for (int i = 0; i < nb; ++i) q += above(a, b, t.bcos[off + i], t.bsin[off + i]) ? 1 : 0;
  return static_cast<unsigned>(q);
}

struct ChunkJob {
  uint8_t* region = nullptr;  // head region of the page
  int slot0 = 0;              // first slot of the chunk in the page (a multiple of 32)
  int begin = 0, end = 0;     // active chunk-local slots [begin, end)
  const float* x = nullptr;   // row of chunk-local slot `begin` (stride x_stride floats)
  size_t x_stride = 0;
};

// Prefill: chunk blockIdx.x of positions [first, first + n). Append: sequence blockIdx.x.
__device__ ChunkJob chunk_job(const DeviceCodec& c, uint8_t* pool, const int32_t* tables,
                              int max_pages, const int32_t* positions, size_t first, size_t n,
                              const float* x) {
  ChunkJob job;
  const int h = blockIdx.y;
  size_t pos_begin, pos_end, row0;
  const int32_t* table = tables;
  if (positions == nullptr) {
    const size_t c0 = (first / kChunk + blockIdx.x) * kChunk;
    pos_begin = c0 > first ? c0 : first;
    pos_end = c0 + kChunk < first + n ? c0 + kChunk : first + n;
    row0 = pos_begin - first;
    job.x_stride = static_cast<size_t>(c.n_kv_heads) * c.dim;
  } else {
    pos_begin = static_cast<size_t>(positions[blockIdx.x]);
    pos_end = pos_begin + 1;
    row0 = blockIdx.x;
    table = tables + static_cast<size_t>(blockIdx.x) * max_pages;
    job.x_stride = 0;
  }
  const size_t page = pos_begin / c.page_tokens;
  const int slot = static_cast<int>(pos_begin % c.page_tokens);
  job.slot0 = slot / kChunk * kChunk;
  job.begin = slot - job.slot0;
  job.end = job.begin + static_cast<int>(pos_end - pos_begin);
  job.region = pool + static_cast<size_t>(table[page]) * c.page_bytes +
               static_cast<size_t>(h) * c.head_bytes;
  job.x = x + (row0 * c.n_kv_heads + h) * c.dim;
  return job;
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
  for (int i = threadIdx.x; i < c.table_entries; i += kThreads) {
    bcos[i] = c.boundary_cos[i];
    bsin[i] = c.boundary_sin[i];
  }
  const int k1 = 1 << c.bits[0];
  const QuantTables quant{
      bcos, bsin, c.cos_table[0], c.sin_table[0], c.cos_table[k1 - 1], c.sin_table[k1 - 1]};

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
  const size_t smem = encode_smem_bytes<D>() + 2 * codec.device().table_entries * sizeof(float);
  check_cuda(cudaFuncSetAttribute(encode_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(smem)),
             "cudaFuncSetAttribute(encode)");
  const dim3 grid(jobs, codec.n_kv_heads());
  encode_kernel<D><<<grid, kThreads, smem, stream>>>(codec.device(), pool, tables, max_pages,
                                                     positions, first, n, x, rotated);
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
