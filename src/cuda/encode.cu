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

#include <cstdint>
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
// M: global, row-major D x D; Ms: shared scratch of 32 x D floats; X and Y rows kRow floats apart.
template <int D, int kRow = D>
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
        const float x = X[(t0 + m) * kRow + j0 + jj];
#pragma unroll
        for (int k = 0; k < 8; ++k) acc[m][k] = __fmaf_rn(x, s[k], acc[m][k]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int m = 0; m < kTm; ++m)
#pragma unroll
    for (int k = 0; k < 8; ++k) Y[(t0 + m) * kRow + cg * 8 + k] = acc[m][k];
}

// fb cos(t) - fa sin(t) > 0, i.e. the angle of (fa, fb) lies above boundary t; no contraction,
// as on the CPU.
__device__ __forceinline__ bool above(float fa, float fb, float c, float s) {
  return __fsub_rn(__fmul_rn(fb, c), __fmul_rn(fa, s)) > 0.0f;
}

// PolarCodec::quantize_rotated's level-1 rule: fold the lower half-plane onto the upper, count
// the boundaries below the angle, and settle the wrap-around between the first and last code by
// comparing projections onto their centroids. B > 0: the width known at compile time.
template <int B = 0>
__device__ __forceinline__ unsigned quantize_level1(const DeviceCodec& c, const QuantTables& t,
                                                    float a, float b) {
  const int k = B > 0 ? 1 << B : 1 << c.bits[0];
  const bool upper = b > 0.0f || (b == 0.0f && a >= 0.0f);
  const float fa = upper ? a : -a, fb = upper ? b : -b;
  const int lo = upper ? 0 : c.level1_upper, hi = upper ? c.level1_upper : k - 1;
  int q = lo;
  if (B > 0 && c.level1_search) {
    // Boundaries far apart (DeviceCodec::level1_search): the tests are monotone in i (true, then
    // false) beyond float rounding, so the count is a binary search for the first false one,
    // log2(hi - lo) tests instead of hi - lo, in a fixed number of unrolled steps (so the pairs
    // of a unit interleave).
#pragma unroll
    for (int step = 1 << (B - 1); step >= 1; step /= 2) {
      const int mid = q + step - 1;
      if (mid < hi && above(fa, fb, t.bcos[mid], t.bsin[mid])) q += step;
    }
  } else {
    for (int i = lo; i < hi; ++i) q += above(fa, fb, t.bcos[i], t.bsin[i]) ? 1 : 0;
  }
  if (q == 0 || q == k - 1) {
    const float first = __fadd_rn(__fmul_rn(a, t.cos_first), __fmul_rn(b, t.sin_first));
    const float last = __fadd_rn(__fmul_rn(a, t.cos_last), __fmul_rn(b, t.sin_last));
    q = first >= last ? 0 : k - 1;
  }
  return static_cast<unsigned>(q);
}

template <int B = 0>
__device__ __forceinline__ unsigned quantize_upper(const DeviceCodec& c, const QuantTables& t,
                                                   int level, float a, float b) {
  const int off = c.table_offset[level - 1];
  const int nb = B > 0 ? (1 << B) - 1 : (1 << c.bits[level - 1]) - 1;
  int q = 0;
#pragma unroll
  for (int i = 0; i < nb; ++i) q += above(a, b, t.bcos[off + i], t.bsin[off + i]) ? 1 : 0;
  return static_cast<unsigned>(q);
}

// Copies the quantizer's boundary constants to shared memory (visible after the caller's next
// barrier) and returns the tables over them.
__device__ __forceinline__ QuantTables load_quant_tables(const DeviceCodec& c, float* bcos,
                                                         float* bsin) {
  for (int i = threadIdx.x; i < c.table_entries; i += kThreads) {
    bcos[i] = c.boundary_cos[i];
    bsin[i] = c.boundary_sin[i];
  }
  const int k1 = 1 << c.bits[0];
  return {bcos, bsin, c.cos_table[0], c.sin_table[0], c.cos_table[k1 - 1], c.sin_table[k1 - 1]};
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

// ORs one b-bit code per lane (lane = chunk slot) into the b 32-bit words that a 32-slot chunk
// owns in an interleaved field (b in {1, 2, 4, 8}; B > 0: b known at compile time): one warp
// reduction per word, then lanes 0 .. b-1 issue one fire-and-forget atomic each.
template <int B>
__device__ __forceinline__ void pack_field(uint8_t* chunk_words, int b, unsigned code, bool active,
                                           int lane) {
  if constexpr (B > 0) b = B;
  const int bit = code_bit(lane, b);
  const unsigned mine = active ? code << (bit & 31) : 0u;
  unsigned word = 0;
#pragma unroll
  for (int w = 0; w < (B > 0 ? B : 8); ++w) {
    if (B == 0 && w >= b) break;
    const unsigned v = __reduce_or_sync(0xffffffffu, (bit >> 5) == w ? mine : 0u);
    if (lane == w) word = v;
  }
  if (lane < b && word != 0) atomicOr(reinterpret_cast<uint32_t*>(chunk_words) + lane, word);
}

constexpr int kUnitCodeBytes = kThreads / 32 * 15 * 32;

// Packs one unit's `paper` codes (bits 4/2/2/2; `codes`: 15 fields x 32 slots, one byte each) into
// the 46 words the chunk owns: one word per lane and round. In an interleaved field a word is the
// OR of 32-bit loads of consecutive slot bytes shifted by b * k: 4-bit word w of group g is
// slots 16g + 4(w % 2) + {0..3} | (same + 8) << 4; 2-bit word g is slots 16g + {0..3} | (+4) << 2 |
// (+8) << 4 | (+12) << 6.
__device__ __forceinline__ void pack_paper_unit(const DeviceCodec& c, const uint8_t* codes,
                                                uint8_t* region, int slot0, int u, int lane) {
  for (int wi = lane; wi < 46; wi += 32) {
    int level, node, w;
    if (wi < 32) {
      level = 1, node = wi / 4, w = wi % 4;
    } else {
      const int r = wi - 32;  // levels 2 (8 words), 3 (4), 4 (2)
      level = r < 8 ? 2 : r < 12 ? 3 : 4;
      const int first = level == 2 ? 0 : level == 3 ? 8 : 12;
      node = (r - first) / 2, w = (r - first) % 2;
    }
    const int count = 16 >> level, b = level == 1 ? 4 : 2;
    const int fi = 16 - 2 * count + node;
    const uint8_t* f = codes + fi * 32;
    const auto load = [&](int slot) { return *reinterpret_cast<const uint32_t*>(f + slot); };
    uint32_t value;
    if (level == 1) {
      const int base = 16 * (w / 2) + 4 * (w % 2);
      value = load(base) | load(base + 8) << 4;
    } else {
      const int base = 16 * w;
      value = load(base) | load(base + 4) << 2 | load(base + 8) << 4 | load(base + 12) << 6;
    }
    if (value == 0) continue;
    uint8_t* field = region + c.level_offset[level - 1] +
                     static_cast<uint32_t>(count * u + node) * c.field_bytes[level - 1] +
                     (slot0 * b) / 8;
    atomicOr(reinterpret_cast<uint32_t*>(field) + w, value);
  }
}

// Encoder for four-level codecs with interleaved code widths (the `paper` preset and its
// relatives): one lane per slot of the chunk and one warp per 16-coordinate unit, the whole polar
// transform of a unit in registers (no barrier between levels), codes packed by warp reductions.
// Same arithmetic, in the same order, as encode_kernel: the codes are bit-identical.
// W = 0: widths read at run time; W = 1: the `paper` widths 4/2/2/2 at compile time. R: the
// input is already rotated (no rotation, fewer registers: 8 blocks per SM at D = 128).
template <int D, int W, bool R>
__global__ void __launch_bounds__(kThreads, D >= 256 ? 4
                                            : R      ? 8
                                                     : 6)  // no spills (ptxas -v)
    encode_units_kernel(DeviceCodec c, uint8_t* pool, const int32_t* tables, int max_pages,
                        const int32_t* positions, size_t first, size_t n, const float* x) {
  constexpr int kRow = D + 4;  // padded rows: lane t's 16-byte reads hit distinct banks
  extern __shared__ __align__(16) uint8_t smem[];
  float* bcos = reinterpret_cast<float*>(smem);
  float* bsin = bcos + c.table_entries;
  // W = 1: per warp, the 15 fields x 32 slots of one unit's codes as bytes, packed afterwards.
  uint8_t* code_bytes = reinterpret_cast<uint8_t*>(bcos + (2 * c.table_entries + 3) / 4 * 4);
  float* X = reinterpret_cast<float*>(code_bytes + (W == 1 ? kUnitCodeBytes : 0));
  float* Y = X + kChunk * kRow;
  float* Ms = Y + kChunk * kRow;
  const ChunkJob job = chunk_job(c, pool, tables, max_pages, positions, first, n, x);
  const QuantTables quant = load_quant_tables(c, bcos, bsin);
  for (int i = threadIdx.x; i < kChunk * D / 4; i += kThreads) {
    const int t = i / (D / 4), col = 4 * (i % (D / 4));
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (t >= job.begin && t < job.end) {
      v = *reinterpret_cast<const float4*>(job.x + (t - job.begin) * job.x_stride + col);
    }
    *reinterpret_cast<float4*>(X + t * kRow + col) = v;
  }
  __syncthreads();
  const float* src = X;
  if constexpr (!R) {
    rotate_tile<D, kRow>(X, c.rotation_t, Ms, Y);
    __syncthreads();
    src = Y;
  }

  const int lane = threadIdx.x % 32;
  const bool active = lane >= job.begin && lane < job.end;
  uint8_t* unit_codes = code_bytes + (threadIdx.x / 32) * 15 * 32;
  for (int u = threadIdx.x / 32; u < D / 16; u += kThreads / 32) {
    float v[16];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float4 f = *reinterpret_cast<const float4*>(src + lane * kRow + 16 * u + 4 * k);
      v[4 * k] = f.x;
      v[4 * k + 1] = f.y;
      v[4 * k + 2] = f.z;
      v[4 * k + 3] = f.w;
    }
    // Level by level: each level's codes are packed as soon as they exist (fewer live registers).
#pragma unroll
    for (int level = 1, count = 8; level <= 4; ++level, count /= 2) {
      constexpr int kB = W == 1 ? 2 : 0;  // levels 2..4 of `paper`
      const int b = W == 1 ? (level == 1 ? 4 : 2) : c.bits[level - 1];
      const uint32_t field = c.field_bytes[level - 1];
      uint8_t* words = job.region + c.level_offset[level - 1] +
                       static_cast<uint32_t>(count * u) * field + (job.slot0 * b) / 8;
#pragma unroll
      for (int j = 0; j < count; ++j) {
        const float a = v[2 * j], b2 = v[2 * j + 1];
        v[j] = __fsqrt_rn(__fadd_rn(__fmul_rn(a, a), __fmul_rn(b2, b2)));
        const unsigned code = level == 1 ? quantize_level1 < W == 1 ? 4 : 0 > (c, quant, a, b2)
                                         : quantize_upper<kB>(c, quant, level, a, b2);
        if constexpr (W == 1) {
          const int fi = 16 - 2 * count + j;  // field index: level 1 0..7, 2 8..11, 3 12..13, 4 14
          unit_codes[fi * 32 + lane] = active ? static_cast<uint8_t>(code) : uint8_t{0};
        } else {
          pack_field<0>(words + j * field, b, code, active, lane);
        }
      }
    }
    if constexpr (W == 1) {
      __syncwarp();
      pack_paper_unit(c, unit_codes, job.region, job.slot0, u, lane);
      __syncwarp();  // the bytes are rewritten by the next unit
    }
    if (active) {
      uint8_t* p = job.region + c.radii_offset +
                   (static_cast<uint32_t>(u) * c.page_tokens + job.slot0 + lane) * c.radius_bytes;
      if (c.radius_kind == 2) {
        *reinterpret_cast<float*>(p) = v[0];
      } else if (c.radius_kind == 0) {
        *reinterpret_cast<__half*>(p) = __float2half_rn(v[0]);
      } else {
        *reinterpret_cast<__nv_bfloat16*>(p) = __float2bfloat16_rn(v[0]);
      }
    }
  }
}

// True when encode_units_kernel handles the codec: four levels, every width interleaved.
bool units_encoder(const DeviceCodec& c) {
  if (c.levels != 4) return false;
  for (int l = 0; l < 4; ++l) {
    if (c.bits[l] != 1 && c.bits[l] != 2 && c.bits[l] != 4 && c.bits[l] != 8) return false;
  }
  return true;
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
  const DeviceCodec& c = codec.device();
  const dim3 grid(jobs, codec.n_kv_heads());
  if (units_encoder(c) && reinterpret_cast<uintptr_t>(x) % 16 == 0) {  // float4 row reads
    const size_t rows = kChunk * (D + 4) * sizeof(float);
    const bool paper = c.bits[0] == 4 && c.bits[1] == 2 && c.bits[2] == 2 && c.bits[3] == 2;
    const size_t smem = (2 * c.table_entries + 3) / 4 * 4 * sizeof(float) +
                        (paper ? kUnitCodeBytes : 0) + rows +
                        (rotated ? 0 : rows + kChunk * D * sizeof(float));
    auto kernel =
        paper ? (rotated ? encode_units_kernel<D, 1, true> : encode_units_kernel<D, 1, false>)
              : (rotated ? encode_units_kernel<D, 0, true> : encode_units_kernel<D, 0, false>);
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)),
               "cudaFuncSetAttribute(encode_units)");
    kernel<<<grid, kThreads, smem, stream>>>(c, pool, tables, max_pages, positions, first, n, x);
  } else {
    const size_t smem = encode_smem_bytes<D>() + 2 * c.table_entries * sizeof(float);
    check_cuda(cudaFuncSetAttribute(encode_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)),
               "cudaFuncSetAttribute(encode)");
    encode_kernel<D><<<grid, kThreads, smem, stream>>>(c, pool, tables, max_pages, positions, first,
                                                       n, x, rotated);
  }
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
