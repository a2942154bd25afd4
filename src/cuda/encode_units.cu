// The units encoder (encode_units.h): one lane per slot of a 32-slot chunk and one warp per
// 16-coordinate unit, levels 1..4 of a unit in registers, levels above 4 (which combine units)
// through shared memory, codes packed into whole words of the page. Same arithmetic, in the same
// order, as the generic encoder (encode.cu): the codes are bit-identical to the CPU's.
#include "cuda/encode_units.h"

#include <polarquant/error.h>

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/device_common.cuh"
#include "cuda/dispatch.h"
#include "cuda/quantize.cuh"

namespace polarquant::cuda {
namespace {

using namespace chunk;

// ORs one b-bit code per lane (lane = chunk slot) into the b 32-bit words that a 32-slot chunk
// owns in a field (b <= 8): one warp reduction per word, then lanes 0 .. b-1 issue one
// fire-and-forget atomic each. Interleaved widths never straddle a word; packed ones (3, 5, 6, 7
// bits) may, and then contribute their low bits to one word and their high bits to the next.
__device__ __forceinline__ void pack_field(uint8_t* chunk_words, int b, unsigned code, bool active,
                                           int lane) {
  const int bit = code_bit(lane, b);
  unsigned word = 0;
  for (int w = 0; w < b; ++w) {
    const int shift = bit - 32 * w;
    unsigned mine = 0;
    if (active && shift >= 0 && shift < 32) mine = code << shift;
    if (active && shift < 0 && shift > -b) mine = code >> -shift;
    const unsigned v = __reduce_or_sync(0xffffffffu, mine);
    if (lane == w) word = v;
  }
  if (lane < b && word != 0) atomicOr(reinterpret_cast<uint32_t*>(chunk_words) + lane, word);
}

// Radius `block` of the chunk's slot `lane`, rounded as the codec stores it.
__device__ __forceinline__ void store_radius(const DeviceCodec& c, const ChunkJob& job, int block,
                                             int lane, float r) {
  if (c.pairs) {  // 32-slot pages: the chunk is the page (slot0 = 0)
    *reinterpret_cast<__half*>(
        job.region + pair_layout::radius_byte(c.dim, c.levels, lane, block)) = __float2half_rn(r);
    return;
  }
  uint8_t* p = job.region + c.radii_offset +
               (static_cast<uint32_t>(block) * c.page_tokens + job.slot0 + lane) * c.radius_bytes;
  if (c.radius_kind == 2) {
    *reinterpret_cast<float*>(p) = r;
  } else if (c.radius_kind == 0) {
    *reinterpret_cast<__half*>(p) = __float2half_rn(r);
  } else {
    *reinterpret_cast<__nv_bfloat16*>(p) = __float2bfloat16_rn(r);
  }
}

// ORs one lane's code into its place in the pairs layout (pair_layout.h; the chunk is the page):
// one or, for a code across a word boundary, two atomics.
__device__ __forceinline__ void store_pair_code(const DeviceCodec& c, const ChunkJob& job,
                                                int level, int node, int lane, unsigned code,
                                                bool active) {
  if (!active || code == 0) return;
  const int bit = pair_layout::code_bit(c.dim, c.levels, level, node, lane);
  uint32_t* word = reinterpret_cast<uint32_t*>(job.region) + (bit >> 5);
  atomicOr(word, code << (bit & 31));
  if ((bit & 31) + c.bits[level - 1] > 32) atomicOr(word + 1, code >> (32 - (bit & 31)));
}

// The address of the chunk's words in field `node` of `level` (1-based).
__device__ __forceinline__ uint8_t* chunk_field(const DeviceCodec& c, const ChunkJob& job,
                                                int level, int node) {
  return job.region + c.level_offset[level - 1] +
         static_cast<uint32_t>(node) * c.field_bytes[level - 1] +
         (job.slot0 * c.bits[level - 1]) / 8;
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

// The same into the pairs layout (pair_layout.h): block u's 16 records of the page (two groups of
// eight token pairs), words 1..3 of each, one word per lane and round. Word 1 holds the upper
// levels' nibbles (code of a) | (code of b) << 2 (level 4, level 3's two nodes, level 2's four),
// words 2 and 3 level 1's bytes (code of a) | (code of b) << 4 for pairs 0..3 and 4..7.
__device__ __forceinline__ void pack_paper_pairs(const DeviceCodec& c, const uint8_t* codes,
                                                 uint8_t* region, int u, int lane) {
  for (int wi = lane; wi < 48; wi += 32) {
    const int rec = wi / 3, word = 1 + wi % 3;
    const int g = rec / 8, q = rec % 8;
    const int a = 16 * g + (q & 3) + 8 * (q >> 2), b = a + 4;
    const auto code = [&](int field, int slot) {
      return static_cast<uint32_t>(codes[field * 32 + slot]);
    };
    uint32_t value = 0;
    if (word == 1) {
#pragma unroll
      for (int n = 0; n < 7; ++n) {  // fields: level 4 is 14, level 3 12..13, level 2 8..11
        const int field = n == 0 ? 14 : n < 3 ? 11 + n : 5 + n;
        value |= (code(field, a) | code(field, b) << 2) << (4 * n);
      }
    } else {
      const int first = 4 * (word - 2);
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        value |= (code(first + p, a) | code(first + p, b) << 4) << (8 * p);
      }
    }
    if (value == 0) continue;
    uint32_t* words = reinterpret_cast<uint32_t*>(region + pair_layout::record_at(c.dim, g, u, q));
    atomicOr(words + word, value);
  }
}

// The encoder: one lane per slot of the chunk and one warp per 16-coordinate unit, levels 1..4 of
// a unit in registers (no barrier between them), levels above 4 through shared memory. W = 0:
// widths read at run time, codes packed by warp reductions; W = 1: the `paper` widths 4/2/2/2 at
// compile time, codes staged as bytes and packed a word per lane. R: the input is already rotated
// (no rotation, fewer registers: 8 blocks per SM at D = 128).
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
  // Levels above 4 (L > 4): the units' level-4 radii, then each level's, [node][slot].
  float* upper = reinterpret_cast<float*>(code_bytes + (W == 1 ? kUnitCodeBytes : 0));
  float* X = upper + 2 * (D / 16) * kChunk;
  float* Y = X + kChunk * kRow;
  float* Ms = Y + kChunk * kRow;
  const ChunkJob job = chunk_job(c, pool, tables, max_pages, positions, first, n, x);
  const QuantTables quant = load_quant_tables(c, bcos, bsin);
  // Rows of 16-byte-aligned input are read as float4, others float by float (row strides are
  // multiples of 4 floats, so one test on the first row decides for the block; two loops keep the
  // aligned one free of the other's loads).
  if (reinterpret_cast<uintptr_t>(job.x) % 16 == 0) {
    for (int i = threadIdx.x; i < kChunk * D / 4; i += kThreads) {
      const int t = i / (D / 4), col = 4 * (i % (D / 4));
      float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (t >= job.begin && t < job.end) {
        v = *reinterpret_cast<const float4*>(job.x + (t - job.begin) * job.x_stride + col);
      }
      *reinterpret_cast<float4*>(X + t * kRow + col) = v;
    }
  } else {
    for (int i = threadIdx.x; i < kChunk * D; i += kThreads) {
      const int t = i / D, col = i % D;
      const bool active = t >= job.begin && t < job.end;
      X[t * kRow + col] = active ? job.x[(t - job.begin) * job.x_stride + col] : 0.0f;
    }
  }
  __syncthreads();
  const float* src = X;
  if constexpr (!R) {
    if (job.end - job.begin == 1) {  // a decode append (block-uniform)
      rotate_row<D, kRow>(X, c.rotation_t, job.begin, Y);
    } else {
      rotate_tile<D, kRow>(X, c.rotation_t, Ms, Y);
    }
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
      constexpr int kB1 = W == 1 ? 4 : 0, kB = W == 1 ? 2 : 0;  // `paper`'s widths
#pragma unroll
      for (int j = 0; j < count; ++j) {
        const float a = v[2 * j], b = v[2 * j + 1];
        v[j] = __fsqrt_rn(__fadd_rn(__fmul_rn(a, a), __fmul_rn(b, b)));
        const unsigned code = level == 1 ? quantize_level1<kB1>(c, quant, a, b)
                                         : quantize_upper<kB>(c, quant, level, a, b);
        if constexpr (W == 1) {
          const int fi = 16 - 2 * count + j;  // field index: level 1 0..7, 2 8..11, 3 12..13, 4 14
          unit_codes[fi * 32 + lane] = active ? static_cast<uint8_t>(code) : uint8_t{0};
        } else if (c.pairs) {
          store_pair_code(c, job, level, count * u + j, lane, code, active);
        } else {
          pack_field(chunk_field(c, job, level, count * u + j), c.bits[level - 1], code, active,
                     lane);
        }
      }
    }
    if constexpr (W == 1) {
      __syncwarp();
      if (c.pairs) {
        pack_paper_pairs(c, unit_codes, job.region, u, lane);
      } else {
        pack_paper_unit(c, unit_codes, job.region, job.slot0, u, lane);
      }
      __syncwarp();  // the bytes are rewritten by the next unit
    }
    if (c.levels > 4) {
      upper[u * kChunk + lane] = v[0];
    } else if (active) {
      store_radius(c, job, u, lane, v[0]);
    }
  }

  // Levels 5 .. L combine units: one pass per level over [node][slot] radii in shared memory,
  // a warp per node, the same arithmetic as the levels below.
  float* cur = upper;
  float* next = upper + (D / 16) * kChunk;
  for (int level = 5; level <= c.levels; ++level) {
    __syncthreads();
    for (int j = threadIdx.x / 32; j < (D >> level); j += kThreads / 32) {
      const float a = cur[2 * j * kChunk + lane], b = cur[(2 * j + 1) * kChunk + lane];
      next[j * kChunk + lane] = __fsqrt_rn(__fadd_rn(__fmul_rn(a, a), __fmul_rn(b, b)));
      const unsigned code = quantize_upper<0>(c, quant, level, a, b);
      if (c.pairs) {
        store_pair_code(c, job, level, j, lane, code, active);
      } else {
        pack_field(chunk_field(c, job, level, j), c.bits[level - 1], code, active, lane);
      }
    }
    float* t = cur;
    cur = next;
    next = t;
  }
  if (c.levels > 4) {
    __syncthreads();
    for (int j = threadIdx.x / 32; j < (D >> c.levels); j += kThreads / 32) {
      if (active) store_radius(c, job, j, lane, cur[j * kChunk + lane]);
    }
  }
}

// The kernel for the codec's widths and the input's domain, with its shared memory.
struct UnitsLaunch {
  void (*kernel)(DeviceCodec, uint8_t*, const int32_t*, int, const int32_t*, size_t, size_t,
                 const float*);
  size_t smem;
};
template <int D>
UnitsLaunch units_launch(const DeviceCodec& c, bool rotated) {
  const size_t rows = kChunk * (D + 4) * sizeof(float);
  const bool paper = c.bits[0] == 4 && c.bits[1] == 2 && c.bits[2] == 2 && c.bits[3] == 2;
  const size_t smem = (2 * c.table_entries + 3) / 4 * 4 * sizeof(float) +
                      (paper ? kUnitCodeBytes : 0) + 2 * (D / 16) * kChunk * sizeof(float) + rows +
                      (rotated ? 0 : rows + kChunk * D * sizeof(float));
  return {paper ? (rotated ? encode_units_kernel<D, 1, true> : encode_units_kernel<D, 1, false>)
                : (rotated ? encode_units_kernel<D, 0, true> : encode_units_kernel<D, 0, false>),
          smem};
}

template <int D>
void launch_units(const DeviceCodec& c, int n_kv_heads, uint8_t* pool, const int32_t* tables,
                  int max_pages, const int32_t* positions, size_t first, size_t n, int jobs,
                  const float* x, bool rotated, Stream stream) {
  const UnitsLaunch l = units_launch<D>(c, rotated);  // configure_encode_units set its smem limit
  const dim3 grid(jobs, n_kv_heads);
  l.kernel<<<grid, kThreads, l.smem, stream>>>(c, pool, tables, max_pages, positions, first, n, x);
  check_cuda(cudaGetLastError(), "launch(encode_units)");
}

}  // namespace

void configure_encode_units(const DeviceCodec& c) {
  with_dim(c.dim, [&](auto d) {
    for (const bool rotated : {false, true}) {
      const UnitsLaunch l = units_launch<decltype(d)::value>(c, rotated);
      allow_dynamic_smem(l.kernel, l.smem, "cudaFuncSetAttribute(encode_units)");
    }
  });
}

void launch_encode_units(const CudaPolarCodec& codec, uint8_t* pool, const int32_t* tables,
                         int max_pages, const int32_t* positions, size_t first, size_t n, int jobs,
                         const float* x, bool rotated, Stream stream) {
  const DeviceCodec& c = codec.device();
  with_dim(c.dim, [&](auto d) {
    launch_units<decltype(d)::value>(c, codec.n_kv_heads(), pool, tables, max_pages, positions,
                                     first, n, jobs, x, rotated, stream);
  });
}

}  // namespace polarquant::cuda
