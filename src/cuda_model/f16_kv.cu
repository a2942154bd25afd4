// fp16 pages on the GPU (layout: f16_kv.h): stores, a gather for prefill attention, and split-KV
// decode attention. The decode kernel is the baseline PolarQuant's decode is measured against, so
// it is written to be memory-bound: a warp takes 32 tokens at a time, each lane one token's key
// (16-byte loads, all in flight before use) for the scores, then each lane D/32 dimensions of
// every token's value (one coalesced row per token) for P.V; online softmax per warp, the four
// warps of a block merged in shared memory, the splits merged by a second kernel.
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
    const int n_tok = min(kTile, length - t * kTile);
#pragma unroll 4
    for (int i = 0; i < n_tok; ++i) {
      const int tk = t * kTile + i;
      const size_t voff =
          slot_offset(lay, table[tk / lay.page_tokens], kvh, tk % lay.page_tokens) + lane * kDims;
      float vf[kDims];
      if constexpr (kDims == 2) {
        const float2 f = __half22float2(*reinterpret_cast<const __half2*>(vpool + voff));
        vf[0] = f.x;
        vf[1] = f.y;
      } else {
        const __half2* h2 = reinterpret_cast<const __half2*>(vpool + voff);
#pragma unroll
        for (int e = 0; e < kDims / 2; ++e) {
          const float2 f = __half22float2(h2[e]);
          vf[2 * e] = f.x;
          vf[2 * e + 1] = f.y;
        }
      }
#pragma unroll
      for (int j = 0; j < kHeadTile; ++j) {
        const float p = ps[warp][i][j];
#pragma unroll
        for (int e = 0; e < kDims; ++e) acc[j][e] += p * vf[e];
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
  int tiles_per_split = 1;
};

Grid grid_for(const F16Layout& lay, const F16DecodeBatch& b, int multiprocessors) {
  const int g = b.n_q_heads / lay.n_kv_heads;
  const int blocks = b.batch * lay.n_kv_heads * ((g + kHeadTile - 1) / kHeadTile);
  const int tiles = std::max(1, (b.max_length + kTile - 1) / kTile);
  const int want = (4 * multiprocessors + blocks - 1) / blocks;
  Grid grid;
  grid.splits = std::clamp(want, 1, std::max(1, tiles / kWarps));
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
  const size_t rows = static_cast<size_t>(batch.batch) * batch.n_q_heads * grid.splits;
  return align256(rows * layout.head_dim * sizeof(float)) + 2 * align256(rows * sizeof(float));
}

void f16_decode_attention(const F16Layout& layout, const F16DecodeBatch& batch, const float* q,
                          float* out, void* workspace, size_t workspace_bytes, int multiprocessors,
                          CUstream_st* stream) {
  check_batch(layout, batch);
  if (workspace_bytes < f16_decode_workspace_bytes(layout, batch, multiprocessors))
    throw_invalid("f16 decode attention: workspace too small");
  const Grid grid = grid_for(layout, batch, multiprocessors);
  const size_t rows = static_cast<size_t>(batch.batch) * batch.n_q_heads * grid.splits;
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
