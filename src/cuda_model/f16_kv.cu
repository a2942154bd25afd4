// fp16 pages on the GPU (layout: f16_kv.h): stores, a gather for prefill attention, and split-KV
// decode attention. The decode kernel is the baseline PolarQuant's decode is measured against, so
// it is written to be memory-bound: a warp takes one 32-token tile (a page run of one KV head) at a
// time and issues all of the tile's loads before using any: each lane one token's key (16-byte
// loads) for the scores, and each lane D/32 dimensions of every token's value (one coalesced row
// per token) for P.V; online softmax per warp, the four warps of a block merged in shared memory,
// the splits merged by a second kernel. The grid is one wave: as many splits as fill the SMs at
// the kernel's occupancy.
#include "cuda_model/f16_kv.h"

#include <polarquant/error.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "cuda_model/device_buffer.h"

namespace polarquant::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kTile = 32;     // tokens a warp takes at a time
constexpr int kHeadTile = 8;  // query heads a block takes
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ size_t slot_offset(const F16Layout& l, int32_t page, int head,
                                              int slot) {
  return (static_cast<size_t>(page) * l.n_kv_heads * l.page_tokens +
          static_cast<size_t>(head) * l.page_tokens + slot) *
         l.head_dim;
}

__global__ void store_kernel(F16Layout l, __half* pool, const int32_t* page_tables, int max_pages,
                             const int32_t* positions, bool batch_rows, size_t first,
                             const float* x) {
  const int r = blockIdx.x;
  const size_t pos = batch_rows ? static_cast<size_t>(positions[r]) : first + r;
  const int32_t* table = page_tables + (batch_rows ? static_cast<size_t>(r) * max_pages : 0);
  const int32_t page = table[pos / l.page_tokens];
  const int slot = static_cast<int>(pos % l.page_tokens);
  const int width = l.n_kv_heads * l.head_dim;
  for (int i = threadIdx.x; i < width; i += blockDim.x) {
    const int h = i / l.head_dim, e = i % l.head_dim;
    pool[slot_offset(l, page, h, slot) + e] = __float2half(x[static_cast<size_t>(r) * width + i]);
  }
}

__global__ void gather_kernel(F16Layout l, const __half* pool, const int32_t* table, size_t first,
                              size_t stride, __half* out) {
  const size_t t = first + blockIdx.x;
  const int h = blockIdx.y;
  const __half* src =
      pool + slot_offset(l, table[t / l.page_tokens], h, static_cast<int>(t % l.page_tokens));
  __half* dst = out + (static_cast<size_t>(h) * stride + t) * l.head_dim;
  for (int e = threadIdx.x; e < l.head_dim; e += blockDim.x) dst[e] = src[e];
}

// A lane's kDims halves of one value row: 4, 8 or 16 bytes.
template <int kDims>
struct ValueSlice;
template <>
struct ValueSlice<2> {
  using type = uint32_t;
};
template <>
struct ValueSlice<4> {
  using type = uint2;
};
template <>
struct ValueSlice<8> {
  using type = uint4;
};

// Slices of tokens [base, base + N) of a tile whose lane-0 row starts at v (row stride D halves,
// D = 32 x the slice's halves); tokens at or past n_tok are not read.
template <class Slice, int N>
__device__ __forceinline__ void load_values(const __half* v, int base, int n_tok, Slice (&out)[N]) {
  constexpr int kRow = 32 * static_cast<int>(sizeof(Slice)) / 2;  // halves per row = D
#pragma unroll
  for (int i = 0; i < N; ++i) {
    if (base + i < n_tok)
      out[i] = *reinterpret_cast<const Slice*>(v + static_cast<size_t>(base + i) * kRow);
  }
}

template <int kDims, class Slice>
__device__ __forceinline__ void unpack_values(const Slice& s, float (&vf)[kDims]) {
  const __half2* h2 = reinterpret_cast<const __half2*>(&s);
#pragma unroll
  for (int e = 0; e < kDims / 2; ++e) {
    const float2 f = __half22float2(h2[e]);
    vf[2 * e] = f.x;
    vf[2 * e + 1] = f.y;
  }
}

struct Partials {
  float* acc;  // [batch][n_q_heads][splits][D], unnormalised
  float* m;    // [batch][n_q_heads][splits], running max (log2 domain)
  float* l;    // [batch][n_q_heads][splits]
};

template <int D>
__global__ void __launch_bounds__(kWarps * 32)
    decode_kernel(F16Layout lay, F16DecodeBatch b, const float* q, int splits, int tiles_per_split,
                  Partials part) {
  constexpr int kDims = D / 32;   // value dimensions per lane
  constexpr int kChunks = D / 8;  // 16-byte key chunks per token
  // Value rows loaded at once: the whole tile up to D = 128 (64 registers at D = 128), 4 at a time
  // for D = 256, whose keys already take 128 registers (8 spilled).
  constexpr int kVBatch = D <= 128 ? kTile : 4;
  __shared__ float4 qs[kHeadTile][D / 4];
  __shared__ float ps[kWarps][kTile][kHeadTile];
  __shared__ float ms[kWarps][kHeadTile], ls[kWarps][kHeadTile];
  __shared__ float accs[kWarps][kHeadTile][D];

  const int split = blockIdx.x, seq = blockIdx.z;
  const int g = b.n_q_heads / lay.n_kv_heads, tiles_per_head = (g + kHeadTile - 1) / kHeadTile;
  const int kvh = blockIdx.y / tiles_per_head, tile = blockIdx.y % tiles_per_head;
  const int head0 = kvh * g + tile * kHeadTile, heads = min(kHeadTile, g - tile * kHeadTile);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int length = b.lengths[seq];
  const float scale = (b.scale > 0.0f ? b.scale : rsqrtf(static_cast<float>(D))) * kLog2e;

  for (int i = threadIdx.x; i < kHeadTile * D; i += blockDim.x) {
    const int j = i / D, e = i % D;
    reinterpret_cast<float*>(qs[j])[e] =
        j < heads ? q[(static_cast<size_t>(seq) * b.n_q_heads + head0 + j) * D + e] * scale : 0.0f;
  }
  __syncthreads();

  float m[kHeadTile], l[kHeadTile], acc[kHeadTile][kDims];
#pragma unroll
  for (int j = 0; j < kHeadTile; ++j) {
    m[j] = -INFINITY;
    l[j] = 0.0f;
#pragma unroll
    for (int e = 0; e < kDims; ++e) acc[j][e] = 0.0f;
  }
  const int32_t* table = b.page_tables + static_cast<size_t>(seq) * b.max_pages;
  const __half* kpool = reinterpret_cast<const __half*>(b.k_pool);
  const __half* vpool = reinterpret_cast<const __half*>(b.v_pool);
  const int tiles = (length + kTile - 1) / kTile;
  const int t0 = split * tiles_per_split, t1 = min(tiles, t0 + tiles_per_split);
  for (int t = t0 + warp; t < t1; t += kWarps) {
    const int token = t * kTile + lane;
    const bool valid = token < length;
    const int tok = valid ? token : t * kTile;  // a readable slot for idle lanes
    const size_t koff = slot_offset(lay, table[tok / lay.page_tokens], kvh, tok % lay.page_tokens);
    uint4 kc[kChunks];
    const uint4* krow = reinterpret_cast<const uint4*>(kpool + koff);
#pragma unroll
    for (int c = 0; c < kChunks; ++c) kc[c] = krow[c];
    // The tile's value rows (one page, kTile | page_tokens): the first kVBatch tokens' slices are
    // in flight with the keys.
    const int n_tok = min(kTile, length - t * kTile);
    const size_t vtile =
        slot_offset(lay, table[t * kTile / lay.page_tokens], kvh, t * kTile % lay.page_tokens) +
        lane * kDims;
    typename ValueSlice<kDims>::type vr[kVBatch];
    load_values(vpool + vtile, 0, n_tok, vr);
    float s[kHeadTile];
#pragma unroll
    for (int j = 0; j < kHeadTile; ++j) s[j] = 0.0f;
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const __half2* h2 = reinterpret_cast<const __half2*>(&kc[c]);
      float kf[8];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 f = __half22float2(h2[i]);
        kf[2 * i] = f.x;
        kf[2 * i + 1] = f.y;
      }
#pragma unroll
      for (int j = 0; j < kHeadTile; ++j) {
        if (j < heads) {
          const float4 a = qs[j][2 * c], bq = qs[j][2 * c + 1];
          s[j] += a.x * kf[0] + a.y * kf[1] + a.z * kf[2] + a.w * kf[3] + bq.x * kf[4] +
                  bq.y * kf[5] + bq.z * kf[6] + bq.w * kf[7];
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kHeadTile; ++j) {
      if (j >= heads) {
        ps[warp][lane][j] = 0.0f;
        continue;
      }
      const float sj = valid ? s[j] : -INFINITY;
      float tmax = sj;
      for (int o = 16; o > 0; o >>= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
      const float mnew = fmaxf(m[j], tmax);
      const float corr = exp2f(m[j] - mnew);  // m[j] = -inf at first: corr = 0
      const float p = valid ? exp2f(sj - mnew) : 0.0f;
      float psum = p;
      for (int o = 16; o > 0; o >>= 1) psum += __shfl_xor_sync(0xffffffffu, psum, o);
      l[j] = l[j] * corr + psum;
      m[j] = mnew;
#pragma unroll
      for (int e = 0; e < kDims; ++e) acc[j][e] *= corr;
      ps[warp][lane][j] = p;
    }
    __syncwarp();
#pragma unroll
    for (int base = 0; base < kTile; base += kVBatch) {
      if (base > 0) load_values(vpool + vtile, base, n_tok, vr);
#pragma unroll
      for (int i = 0; i < kVBatch; ++i) {
        if (base + i >= n_tok) break;
        float vf[kDims];
        unpack_values<kDims>(vr[i], vf);
#pragma unroll
        for (int j = 0; j < kHeadTile; ++j) {
          const float p = ps[warp][base + i][j];
#pragma unroll
          for (int e = 0; e < kDims; ++e) acc[j][e] += p * vf[e];
        }
      }
    }
    __syncwarp();
  }

  if (lane == 0) {
#pragma unroll
    for (int j = 0; j < kHeadTile; ++j) {
      ms[warp][j] = m[j];
      ls[warp][j] = l[j];
    }
  }
#pragma unroll
  for (int j = 0; j < kHeadTile; ++j)
#pragma unroll
    for (int e = 0; e < kDims; ++e) accs[warp][j][lane * kDims + e] = acc[j][e];
  __syncthreads();
  for (int i = threadIdx.x; i < heads * D; i += blockDim.x) {
    const int j = i / D, e = i % D;
    float mm = -INFINITY;
    for (int w = 0; w < kWarps; ++w) mm = fmaxf(mm, ms[w][j]);
    float a = 0.0f, ll = 0.0f;
    if (mm != -INFINITY) {
      for (int w = 0; w < kWarps; ++w) {
        const float f = exp2f(ms[w][j] - mm);
        a += f * accs[w][j][e];
        ll += f * ls[w][j];
      }
    }
    const size_t row = (static_cast<size_t>(seq) * b.n_q_heads + head0 + j) * splits + split;
    part.acc[row * D + e] = a;
    if (e == 0) {
      part.m[row] = mm;
      part.l[row] = ll;
    }
  }
}

__global__ void merge_kernel(Partials part, int splits, int dim, float* out, float* lse) {
  const size_t row = blockIdx.x;  // seq * n_q_heads + head
  float mm = -INFINITY;
  for (int s = 0; s < splits; ++s) mm = fmaxf(mm, part.m[row * splits + s]);
  for (int e = threadIdx.x; e < dim; e += blockDim.x) {
    float a = 0.0f, ll = 0.0f;
    if (mm != -INFINITY) {
      for (int s = 0; s < splits; ++s) {
        const float f = exp2f(part.m[row * splits + s] - mm);
        a += f * part.acc[(row * splits + s) * dim + e];
        ll += f * part.l[row * splits + s];
      }
    }
    out[row * dim + e] = ll > 0.0f ? a / ll : 0.0f;
    if (e == 0 && lse != nullptr) {
      lse[row] = ll > 0.0f ? (mm + log2f(ll)) * 0.6931471805599453f : -INFINITY;
    }
  }
}

struct Grid {
  int splits = 1;
  int max_splits = 1;  // >= splits for every max_length up to this one
  int tiles_per_split = 1;
};

// Resident blocks per SM of the decode kernel for head_dim D (registers decide it).
int blocks_per_sm(int head_dim) {
  static int cached[3] = {0, 0, 0};
  const int k = head_dim == 64 ? 0 : head_dim == 128 ? 1 : 2;
  if (cached[k] == 0) {
    int n = 0;
    cudaError_t e =
        head_dim == 64
            ? cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, decode_kernel<64>, kWarps * 32, 0)
        : head_dim == 128
            ? cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, decode_kernel<128>, kWarps * 32, 0)
            : cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, decode_kernel<256>, kWarps * 32, 0);
    cached[k] = e == cudaSuccess && n > 0 ? n : 2;
  }
  return cached[k];
}

// Splits of the context: one wave of blocks (the SMs full at the kernel's occupancy), each split
// at least one tile per warp.
Grid grid_for(const F16Layout& lay, const F16DecodeBatch& b, int multiprocessors) {
  const int g = b.n_q_heads / lay.n_kv_heads;
  const int blocks = b.batch * lay.n_kv_heads * ((g + kHeadTile - 1) / kHeadTile);
  const int tiles = std::max(1, (b.max_length + kTile - 1) / kTile);
  const int wave = blocks_per_sm(lay.head_dim) * std::max(1, multiprocessors);
  const int want = std::max(1, wave / blocks);
  Grid grid;
  // An upper bound on the splits of any shorter context too (the rounding below can only lower
  // it), which is what the workspace is sized by.
  grid.splits = std::clamp(want, 1, std::max(1, tiles / kWarps));
  grid.max_splits = grid.splits;
  grid.tiles_per_split = (tiles + grid.splits - 1) / grid.splits;
  grid.splits = (tiles + grid.tiles_per_split - 1) / grid.tiles_per_split;
  return grid;
}

size_t align256(size_t n) {
  return (n + 255) / 256 * 256;
}

void check_batch(const F16Layout& lay, const F16DecodeBatch& b) {
  if (lay.head_dim != 64 && lay.head_dim != 128 && lay.head_dim != 256) {
    throw Error(ErrorKind::kUnsupported, "f16 decode attention: head_dim " +
                                             std::to_string(lay.head_dim) +
                                             " (supported: 64, 128, 256)");
  }
  if (b.n_q_heads <= 0 || b.n_q_heads % lay.n_kv_heads != 0)
    throw_invalid("f16 decode attention: n_q_heads must be a positive multiple of n_kv_heads");
  if (b.batch <= 0 || b.max_length < 0) throw_invalid("f16 decode attention: empty batch");
  if (lay.page_tokens % kTile != 0) {
    throw_invalid("f16 decode attention: page_tokens " + std::to_string(lay.page_tokens) +
                  " is not a multiple of " + std::to_string(kTile));
  }
}

}  // namespace

void f16_store(const F16Layout& layout, uint8_t* pool, const int32_t* page_tables, int max_pages,
               const int32_t* positions, bool batch_rows, size_t first, int n, const float* x,
               CUstream_st* stream) {
  if (n <= 0) return;
  store_kernel<<<n, 128, 0, stream>>>(layout, reinterpret_cast<__half*>(pool), page_tables,
                                      max_pages, positions, batch_rows, first, x);
  check_launch("f16_store");
}

void f16_gather(const F16Layout& layout, const uint8_t* pool, const int32_t* page_table,
                size_t first, int n, size_t stride, __half* out, CUstream_st* stream) {
  if (n <= 0) return;
  gather_kernel<<<dim3(n, layout.n_kv_heads), std::min(layout.head_dim, 256), 0, stream>>>(
      layout, reinterpret_cast<const __half*>(pool), page_table, first, stride, out);
  check_launch("f16_gather");
}

size_t f16_decode_workspace_bytes(const F16Layout& layout, const F16DecodeBatch& batch,
                                  int multiprocessors) {
  check_batch(layout, batch);
  const Grid grid = grid_for(layout, batch, multiprocessors);
  const size_t rows = static_cast<size_t>(batch.batch) * batch.n_q_heads * grid.max_splits;
  return align256(rows * layout.head_dim * sizeof(float)) + 2 * align256(rows * sizeof(float));
}

void f16_decode_attention(const F16Layout& layout, const F16DecodeBatch& batch, const float* q,
                          float* out, void* workspace, size_t workspace_bytes, int multiprocessors,
                          CUstream_st* stream) {
  check_batch(layout, batch);
  if (workspace_bytes < f16_decode_workspace_bytes(layout, batch, multiprocessors))
    throw_invalid("f16 decode attention: workspace too small");
  const Grid grid = grid_for(layout, batch, multiprocessors);
  const size_t rows = static_cast<size_t>(batch.batch) * batch.n_q_heads * grid.max_splits;
  auto* base = static_cast<uint8_t*>(workspace);
  Partials part;
  part.acc = reinterpret_cast<float*>(base);
  part.m = reinterpret_cast<float*>(base + align256(rows * layout.head_dim * sizeof(float)));
  part.l = part.m + align256(rows * sizeof(float)) / sizeof(float);
  const int g = batch.n_q_heads / layout.n_kv_heads;
  const dim3 blocks(grid.splits, layout.n_kv_heads * ((g + kHeadTile - 1) / kHeadTile),
                    batch.batch);
  switch (layout.head_dim) {
    case 64:
      decode_kernel<64><<<blocks, kWarps * 32, 0, stream>>>(layout, batch, q, grid.splits,
                                                            grid.tiles_per_split, part);
      break;
    case 128:
      decode_kernel<128><<<blocks, kWarps * 32, 0, stream>>>(layout, batch, q, grid.splits,
                                                             grid.tiles_per_split, part);
      break;
    default:
      decode_kernel<256><<<blocks, kWarps * 32, 0, stream>>>(layout, batch, q, grid.splits,
                                                             grid.tiles_per_split, part);
  }
  check_launch("f16 decode attention");
  merge_kernel<<<batch.batch * batch.n_q_heads, 128, 0, stream>>>(part, grid.splits,
                                                                  layout.head_dim, out, batch.lse);
  check_launch("f16 decode merge");
}

}  // namespace polarquant::cuda
