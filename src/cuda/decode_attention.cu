// Split-KV decode attention over paged PolarQuant K and V.
//
// Kernel 1 (attention_steps.cu) rotates and scales each query once: q' = S q * scale * log2(e).
// Kernel 2 (here): block (split, kv head, sequence) with 4 warps; each warp takes whole pages of
// the split and keeps its own online-softmax state for the g query heads of the KV head. Per
// page: 16-byte coalesced copy of the K and V head regions into shared memory, scores and P.V on
// tensor cores, the softmax in registers; scores never leave registers. Two kernels:
//  - attention_kernel_frag<D, head tiles, Fmt> (the `paper` and `polar37` layouts, Fmt = PaperFmt
//    in paper_decode.cuh, Polar37Fmt in polar37_frag.cuh): the decoders write the MMA operands in
//    registers, with S^T = K Q'^T and O^T = V^T P^T;
//  - attention_kernel (every other layout): per 32-slot tile, K is decoded into an fp16 tile in
//    shared memory, Q'K^T reads it with ldmatrix, then V is decoded into the same tile for P.V.
// Kernel 3 (attention_steps.cu) merges the blocks' partial (m, l, acc) states and applies S^T
// once per output.
//
// This file: the choice of kernel and launch geometry, and the host entry points. The kernels:
// decode_tile_kernel.cuh and decode_frag_kernel.cuh, on the page pipeline of decode_pipeline.cuh.
#include <polarquant/cuda.h>
#include <polarquant/error.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "cuda/attention_steps.h"
#include "cuda/decode_frag_kernel.cuh"
#include "cuda/decode_pipeline.cuh"
#include "cuda/decode_tile_kernel.cuh"
#include "cuda/device_common.cuh"
#include "cuda/dispatch.h"
#include "cuda/mma.cuh"
#include "cuda/paper_decode.cuh"
#include "cuda/polar37_frag.cuh"

namespace polarquant::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;  // the kernels' softmax runs in the log2 domain

using AttentionKernel = void (*)(AttnParams);
struct Launch {
  AttentionKernel kernel = nullptr;
  size_t smem = 0;
  const char* name = "";  // decode_kernel_name
};

template <int D, class Fmt>
Launch frag_choice(int head_tiles) {
  Launch l;
  l.kernel = head_tiles == 1 ? attention_kernel_frag<D, 1, Fmt> : attention_kernel_frag<D, 2, Fmt>;
  l.smem = kWarps * frag_warp_bytes<D, Fmt>(head_tiles);
  l.name = Fmt::kName;
  return l;
}

// The kernel for the codec's shape and g query heads per KV head: the register-fragment kernel
// for the `paper` and `polar37` layouts, else the tile kernel with the fastest decoder for the
// layout.
template <int D>
Launch attention_choice(const DeviceCodec& c, int g) {
  Launch l;
  const int tiles = tiles_for(g);
  if (PaperFmt<D>::matches(c)) {
    l = frag_choice<D, PaperFmt<D>>(tiles);
  } else if (Polar37Fmt<D>::matches(c)) {
    l = frag_choice<D, Polar37Fmt<D>>(tiles);
  } else {
    const bool wide3 = c.bits[0] == 4 && c.bits[1] == 3 && c.bits[2] == 3 && c.bits[3] == 3;
    l.kernel = wide3 ? attention_kernel<D, kWide3Decoder> : attention_kernel<D, kGenericDecoder>;
    l.name = wide3 ? "tile-wide3" : "tile-generic";
    l.smem = smem_plan(c, D).total;
  }
  return l;
}

Launch attention_choice_for(const DeviceCodec& c, int g) {
  Launch l;
  with_dim(c.dim, [&](auto d) { l = attention_choice<decltype(d)::value>(c, g); });
  return l;
}

}  // namespace

void configure_attention(const DeviceCodec& c, int resident[2]) {
  for (int tiles = 1; tiles <= 2; ++tiles) {
    const Launch l = attention_choice_for(c, tiles * kFragHeads);
    allow_dynamic_smem(l.kernel, l.smem, "cudaFuncSetAttribute(attention)");
    check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident[tiles - 1], l.kernel,
                                                             kThreads, l.smem),
               "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  }
}

namespace {

struct Geometry {
  Launch launch;  // chosen once per call (CudaPolarCodec set its shared memory allowance)
  int splits = 1, pages_per_split = 1;
  size_t q_bytes = 0, ml_bytes = 0, acc_bytes = 0;
};

// Splits of the context: enough blocks to fill every SM even at batch 1, at least two pages per
// warp, and a block count close to a whole number of waves (a last, nearly empty wave of blocks
// would leave most SMs idle while it runs).
Geometry geometry(const CudaPolarCodec& codec, const DecodeBatch& batch) {
  const DeviceCodec& c = codec.device();
  Geometry geo;
  const int pages_max = std::max(1, (batch.max_length + c.page_tokens - 1) / c.page_tokens);
  const long heads = static_cast<long>(batch.batch) * c.n_kv_heads;
  const int g = batch.n_q_heads / c.n_kv_heads;
  geo.launch = attention_choice_for(c, g);
  const int resident = codec.attention_resident(tiles_for(g));
  const long slots =
      static_cast<long>(std::max(1, resident)) * std::max(1, codec.multiprocessors());
  const int floor_pages = std::min(2 * kWarps, pages_max);
  double best = -1.0;
  for (int waves = 1; waves <= 16; ++waves) {
    const long want = std::max(1L, (slots * waves + heads - 1) / heads);
    const int pps = std::max(static_cast<int>((pages_max + want - 1) / want), floor_pages);
    const int splits = (pages_max + pps - 1) / pps;
    const long blocks = heads * splits;
    const double efficiency =
        static_cast<double>(blocks) / (static_cast<double>((blocks + slots - 1) / slots) * slots);
    if (efficiency > best + 0.01) {
      best = efficiency;
      geo.pages_per_split = pps;
      geo.splits = splits;
    }
    if (pps == floor_pages) break;
  }
  // The workspace holds the most splits any shorter context could take (at most pages_max and at
  // most the 16-wave count), so one allocation sized at the longest context serves every step.
  const long bound = std::min<long>(pages_max, std::max(1L, (slots * 16 + heads - 1) / heads));
  const size_t parts = static_cast<size_t>(heads) * std::max<long>(bound, geo.splits);
  geo.q_bytes = align_up(static_cast<size_t>(batch.batch) * batch.n_q_heads * c.dim * 2, 256);
  geo.ml_bytes = align_up(parts * g * sizeof(float2), 256);
  geo.acc_bytes = align_up(parts * g * c.dim * sizeof(float), 256);
  return geo;
}

// The query-head count: a positive multiple of the KV heads (kInvalidArgument), at most kRows per
// KV head (kUnsupported).
void check_heads(const CudaPolarCodec& codec, int n_q_heads, const char* caller) {
  const int n_kv = codec.n_kv_heads();
  if (n_q_heads < n_kv || n_q_heads % n_kv != 0) {
    throw_invalid(std::string(caller) + ": n_q_heads " + std::to_string(n_q_heads) +
                  " must be a positive multiple of n_kv_heads " + std::to_string(n_kv));
  }
  if (n_q_heads / n_kv > kRows) {
    throw Error(ErrorKind::kUnsupported, std::string(caller) + ": " +
                                             std::to_string(n_q_heads / n_kv) +
                                             " query heads per KV head; at most 16 are supported");
  }
}

void check_batch(const CudaPolarCodec& codec, const DecodeBatch& batch) {
  const int n_kv = codec.n_kv_heads();
  const auto fail = [&](const std::string& what) {
    throw_invalid("decode_attention: " + what + " (batch " + std::to_string(batch.batch) +
                  ", n_q_heads " + std::to_string(batch.n_q_heads) + ", n_kv_heads " +
                  std::to_string(n_kv) + ", max_length " + std::to_string(batch.max_length) +
                  ", max_pages " + std::to_string(batch.max_pages) + ")");
  };
  if (batch.batch < 1) fail("batch must be >= 1");
  check_heads(codec, batch.n_q_heads, "decode_attention");
  if (batch.max_length < 0) fail("max_length must be >= 0");
  if (static_cast<long>(batch.max_pages) * codec.page_tokens() < batch.max_length) {
    fail("max_pages * page_tokens must cover max_length");
  }
  if (!batch.k_pool || !batch.v_pool || !batch.page_tables || !batch.lengths) {
    fail("k_pool, v_pool, page_tables and lengths must be device pointers");
  }
}

}  // namespace

const char* decode_kernel_name(const CudaPolarCodec& codec, int n_q_heads) {
  check_heads(codec, n_q_heads, "decode_kernel_name");
  return attention_choice_for(codec.device(), n_q_heads / codec.n_kv_heads()).name;
}

size_t decode_workspace_bytes(const CudaPolarCodec& codec, const DecodeBatch& batch) {
  check_batch(codec, batch);
  const Geometry geo = geometry(codec, batch);
  return geo.q_bytes + geo.ml_bytes + geo.acc_bytes;
}

void decode_attention(const CudaPolarCodec& codec, const DecodeBatch& batch, const float* q,
                      float* out, void* workspace, size_t workspace_bytes, Stream stream) {
  check_batch(codec, batch);
  if (!q || !out) throw_invalid("decode_attention: q and out must be device pointers");
  const Geometry geo = geometry(codec, batch);
  const size_t need = geo.q_bytes + geo.ml_bytes + geo.acc_bytes;
  if (workspace == nullptr || workspace_bytes < need) {
    throw_invalid("decode_attention: workspace of " + std::to_string(workspace_bytes) +
                  " bytes; this shape needs " + std::to_string(need) + " (decode_workspace_bytes)");
  }
  const DeviceCodec& c = codec.device();
  const float scale =
      batch.scale > 0.0f ? batch.scale : 1.0f / std::sqrt(static_cast<float>(c.dim));
  uint8_t* ws = static_cast<uint8_t*>(workspace);
  AttnParams p{c,
               batch.k_pool,
               batch.v_pool,
               batch.page_tables,
               batch.max_pages,
               batch.lengths,
               batch.n_q_heads,
               batch.n_q_heads / c.n_kv_heads,
               geo.splits,
               geo.pages_per_split,
               reinterpret_cast<const __half*>(ws),
               reinterpret_cast<float2*>(ws + geo.q_bytes),
               reinterpret_cast<float*>(ws + geo.q_bytes + geo.ml_bytes),
               batch.page_bias,
               scale * kLog2e};

  launch_rotate_query(c, q, batch.batch * batch.n_q_heads, scale * kLog2e,
                      reinterpret_cast<__half*>(ws), stream);

  const dim3 grid(geo.splits, c.n_kv_heads, batch.batch);
  geo.launch.kernel<<<grid, kThreads, geo.launch.smem, stream>>>(p);
  check_cuda(cudaGetLastError(), "launch(attention)");

  launch_merge(c, batch.batch, batch.n_q_heads, p.g, geo.splits, p.part_ml, p.part_acc, out,
               batch.lse, stream);
}

}  // namespace polarquant::cuda
