// Split-KV decode attention over paged PolarQuant K and V.
//
// Kernel 1 (attention_steps.cu) rotates and scales each query once: q' = S q * scale * log2(e).
// Kernel 2 (here): block (split, kv head, sequence) with 4 warps; each warp takes whole pages of
// the split and keeps its own online-softmax state for the g query heads of the KV head. Per
// page: 16-byte coalesced copy of the K and V head regions into shared memory, scores and P.V on
// tensor cores, the softmax in registers; scores never leave registers. Two kernels:
//  - attention_kernel_frag<D, head tiles, Fmt> (the `paper` and `polar37` layouts, Fmt =
//    PaperPairsFmt / Polar37PairsFmt (paper_pairs_decode.cuh, polar37_pairs_decode.cuh) for the
//    pairs layout, PaperFmt in
//    paper_decode.cuh and Polar37Fmt in polar37_frag.cuh for the host layouts): the decoders write
//    the MMA operands in registers, with S^T = K Q'^T and O^T = V^T P^T;
//  - attention_kernel<D, key decoder, value decoder> (every other layout, and keys and values of
//    different layouts, as polar4kv's): per 32-slot tile, K is decoded into an fp16 tile in shared
//    memory, Q'K^T reads it with ldmatrix, then V is decoded into the same tile for P.V.
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
#include <map>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>

#include "cuda/attention_steps.h"
#include "cuda/decode_frag_kernel.cuh"
#include "cuda/decode_pipeline.cuh"
#include "cuda/decode_tile_kernel.cuh"
#include "cuda/device_common.cuh"
#include "cuda/dispatch.h"
#include "cuda/mma.cuh"
#include "cuda/paper_decode.cuh"
#include "cuda/paper_pairs_decode.cuh"
#include "cuda/polar37_frag.cuh"
#include "cuda/polar37_pairs_decode.cuh"

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

// The tile kernel's decoder pairs that are compiled: both sides wide3, polar4kv's (wide5 keys,
// narrow2 values), else generic on both sides.
template <int D>
Launch tile_choice(const DeviceCodec& kc, const DeviceCodec& vc) {
  Launch l;
  const Decoder kd = decoder_for(kc), vd = decoder_for(vc);
  if (kd == kWide3Decoder && vd == kWide3Decoder) {
    l.kernel = attention_kernel<D, kWide3Decoder, kWide3Decoder>;
    l.name = "tile-wide3";
  } else if (kd == kWide5Decoder && vd == kNarrow2Decoder) {
    l.kernel = attention_kernel<D, kWide5Decoder, kNarrow2Decoder>;
    l.name = "tile-wide5-narrow2";
  } else {
    l.kernel = attention_kernel<D, kGenericDecoder, kGenericDecoder>;
    l.name = "tile-generic";
  }
  l.smem = smem_plan(kc, vc, D).total;
  return l;
}

// The kernel for the key and value layouts and g query heads per KV head: the register-fragment
// kernel where keys and values share a `paper` or `polar37` codec, else the tile kernel with the
// fastest decoders for the two layouts.
template <int D>
Launch attention_choice(const DeviceCodec& kc, const DeviceCodec& vc, int g) {
  const int tiles = tiles_for(g);
  const bool shared = kc.cos_table == vc.cos_table;  // one CudaPolarCodec for both
  if (shared && PaperPairsFmt<D>::matches(kc)) return frag_choice<D, PaperPairsFmt<D>>(tiles);
  if (shared && Polar37PairsFmt<D>::matches(kc)) return frag_choice<D, Polar37PairsFmt<D>>(tiles);
  if (shared && PaperFmt<D>::matches(kc)) return frag_choice<D, PaperFmt<D>>(tiles);
  if (shared && Polar37Fmt<D>::matches(kc)) return frag_choice<D, Polar37Fmt<D>>(tiles);
  return tile_choice<D>(kc, vc);
}

Launch attention_choice_for(const DeviceCodec& kc, const DeviceCodec& vc, int g) {
  Launch l;
  with_dim(kc.dim, [&](auto d) { l = attention_choice<decltype(d)::value>(kc, vc, g); });
  return l;
}

// Blocks of a launch resident per SM, with the kernel's shared-memory allowance raised to the
// launch's on first sight: measured once per (kernel, shared memory) and kept for the process, so
// a decode call after the first (or after CudaPolarCodec's constructor, which asks for its own
// kernels) makes no CUDA API call but its launches.
int resident_blocks(const Launch& l) {
  static std::mutex mutex;
  static std::map<std::pair<const void*, size_t>, int> known;
  const std::pair<const void*, size_t> key(reinterpret_cast<const void*>(l.kernel), l.smem);
  const std::lock_guard<std::mutex> lock(mutex);
  const auto it = known.find(key);
  if (it != known.end()) return it->second;
  allow_dynamic_smem(l.kernel, l.smem, "cudaFuncSetAttribute(attention)");
  int resident = 0;
  check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, l.kernel, kThreads, l.smem),
             "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  known.emplace(key, resident);
  return resident;
}

}  // namespace

void configure_attention(const DeviceCodec& c) {
  for (int tiles = 1; tiles <= 2; ++tiles) {
    resident_blocks(attention_choice_for(c, c, tiles * kFragHeads));
  }
}

namespace {

struct Geometry {
  Launch launch;  // chosen once per call (resident_blocks set its shared memory allowance)
  int splits = 1, pages_per_split = 1;
  size_t q_bytes = 0, ml_bytes = 0, acc_bytes = 0;
};

// Splits of the context: enough blocks to fill every SM even at batch 1, at least two pages per
// warp, and a block count close to a whole number of waves (a last, nearly empty wave of blocks
// would leave most SMs idle while it runs).
Geometry geometry(const CudaPolarCodec& keys, const CudaPolarCodec& values,
                  const DecodeBatch& batch) {
  const DeviceCodec& c = keys.device();
  Geometry geo;
  const int pages_max = std::max(1, (batch.max_length + c.page_tokens - 1) / c.page_tokens);
  const long heads = static_cast<long>(batch.batch) * c.n_kv_heads;
  const int g = batch.n_q_heads / c.n_kv_heads;
  geo.launch = attention_choice_for(c, values.device(), g);
  const int resident = resident_blocks(geo.launch);
  const long slots = static_cast<long>(std::max(1, resident)) * std::max(1, keys.multiprocessors());
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

// Keys and values of one cache: the same dim, KV heads and page tokens (kInvalidArgument).
void check_pair(const CudaPolarCodec& keys, const CudaPolarCodec& values, const char* caller) {
  if (keys.dim() != values.dim() || keys.n_kv_heads() != values.n_kv_heads() ||
      keys.page_tokens() != values.page_tokens()) {
    const auto shape = [](const CudaPolarCodec& c) {
      return "dim " + std::to_string(c.dim()) + ", " + std::to_string(c.n_kv_heads()) +
             " KV heads, " + std::to_string(c.page_tokens()) + "-token pages";
    };
    throw_invalid(std::string(caller) + ": the key codec (" + shape(keys) +
                  ") and the value codec (" + shape(values) + ") must have the same shape");
  }
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

void check_batch(const CudaPolarCodec& keys, const CudaPolarCodec& values,
                 const DecodeBatch& batch) {
  const int n_kv = keys.n_kv_heads();
  const auto fail = [&](const std::string& what) {
    throw_invalid("decode_attention: " + what + " (batch " + std::to_string(batch.batch) +
                  ", n_q_heads " + std::to_string(batch.n_q_heads) + ", n_kv_heads " +
                  std::to_string(n_kv) + ", max_length " + std::to_string(batch.max_length) +
                  ", max_pages " + std::to_string(batch.max_pages) + ")");
  };
  check_pair(keys, values, "decode_attention");
  if (batch.batch < 1) fail("batch must be >= 1");
  check_heads(keys, batch.n_q_heads, "decode_attention");
  if (batch.max_length < 0) fail("max_length must be >= 0");
  if (static_cast<long>(batch.max_pages) * keys.page_tokens() < batch.max_length) {
    fail("max_pages * page_tokens must cover max_length");
  }
  if (!batch.k_pool || !batch.v_pool || !batch.page_tables || !batch.lengths) {
    fail("k_pool, v_pool, page_tables and lengths must be device pointers");
  }
}

}  // namespace

const char* decode_kernel_name(const CudaPolarCodec& codec, int n_q_heads) {
  return decode_kernel_name(codec, codec, n_q_heads);
}

const char* decode_kernel_name(const CudaPolarCodec& keys, const CudaPolarCodec& values,
                               int n_q_heads) {
  check_pair(keys, values, "decode_kernel_name");
  check_heads(keys, n_q_heads, "decode_kernel_name");
  return attention_choice_for(keys.device(), values.device(), n_q_heads / keys.n_kv_heads()).name;
}

size_t decode_workspace_bytes(const CudaPolarCodec& codec, const DecodeBatch& batch) {
  return decode_workspace_bytes(codec, codec, batch);
}

size_t decode_workspace_bytes(const CudaPolarCodec& keys, const CudaPolarCodec& values,
                              const DecodeBatch& batch) {
  check_batch(keys, values, batch);
  const Geometry geo = geometry(keys, values, batch);
  return geo.q_bytes + geo.ml_bytes + geo.acc_bytes;
}

void decode_attention(const CudaPolarCodec& codec, const DecodeBatch& batch, const float* q,
                      float* out, void* workspace, size_t workspace_bytes, Stream stream) {
  decode_attention(codec, codec, batch, q, out, workspace, workspace_bytes, stream);
}

void decode_attention(const CudaPolarCodec& keys, const CudaPolarCodec& values,
                      const DecodeBatch& batch, const float* q, float* out, void* workspace,
                      size_t workspace_bytes, Stream stream) {
  check_batch(keys, values, batch);
  if (!q || !out) throw_invalid("decode_attention: q and out must be device pointers");
  const Geometry geo = geometry(keys, values, batch);
  const size_t need = geo.q_bytes + geo.ml_bytes + geo.acc_bytes;
  if (workspace == nullptr || workspace_bytes < need) {
    throw_invalid("decode_attention: workspace of " + std::to_string(workspace_bytes) +
                  " bytes; this shape needs " + std::to_string(need) + " (decode_workspace_bytes)");
  }
  const DeviceCodec& kc = keys.device();
  const DeviceCodec& vc = values.device();
  const float scale =
      batch.scale > 0.0f ? batch.scale : 1.0f / std::sqrt(static_cast<float>(kc.dim));
  uint8_t* ws = static_cast<uint8_t*>(workspace);
  AttnParams p{kc,
               vc,
               batch.k_pool,
               batch.v_pool,
               batch.page_tables,
               batch.max_pages,
               batch.lengths,
               batch.n_q_heads,
               batch.n_q_heads / kc.n_kv_heads,
               geo.splits,
               geo.pages_per_split,
               reinterpret_cast<const __half*>(ws),
               reinterpret_cast<float2*>(ws + geo.q_bytes),
               reinterpret_cast<float*>(ws + geo.q_bytes + geo.ml_bytes),
               batch.page_bias,
               scale * kLog2e};

  // Scores in the keys' rotated domain, outputs back from the values' (the two codecs may hold
  // different rotations).
  launch_rotate_query(kc, q, batch.batch * batch.n_q_heads, scale * kLog2e,
                      reinterpret_cast<__half*>(ws), stream);

  const dim3 grid(geo.splits, kc.n_kv_heads, batch.batch);
  geo.launch.kernel<<<grid, kThreads, geo.launch.smem, stream>>>(p);
  check_cuda(cudaGetLastError(), "launch(attention)");

  launch_merge(vc, batch.batch, batch.n_q_heads, p.g, geo.splits, p.part_ml, p.part_acc, out,
               batch.lse, stream);
}

}  // namespace polarquant::cuda
