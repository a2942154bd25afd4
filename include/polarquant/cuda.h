// CUDA kernels for PolarQuant pages: encode (rotate + polar + quantize + pack), dequantize, and
// split-KV decode attention over paged K and V. Plain C++: no CUDA header is needed to use it.
//
// Device pages come in two layouts (PageLayout): the CPU cache's byte for byte (PolarPageLayout,
// docs/FORMAT.md section 4), or for `paper` and `polar37` the kernels' own "pairs" layout (4.1),
// which the decode kernel reads with one 16-byte load per lane and block. A page holds n_kv_heads
// head regions of head_bytes() each; convert_pages moves pages between the two, and the CPU cache
// stays the reference. Design and measurements: docs/design/cuda.md, docs/BENCHMARKS.md section 3.
//
// Conventions (flashinfer/CUTLASS style): every pointer named "device" points to GPU memory the
// caller owns; calls only enqueue work on `stream` (no allocation, no synchronisation), so they
// can be captured in a CUDA graph; bad arguments and CUDA launch failures throw polarquant::Error.
// Only the CudaPolarCodec constructor allocates (its constant tables).
#pragma once

#include <polarquant/polar_codec.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace polarquant::cuda {

using Stream = CUstream_st*;  // nullptr: the default stream

// True when the CUDA runtime sees a device; otherwise false with the reason in *why.
bool device_available(std::string* why = nullptr);

struct DeviceCodec;  // the kernels' view of the codec (src/cuda/device_codec.h)

// How a CudaPolarCodec lays out its pages. kHost: the CPU cache's layout, byte for byte. kPairs:
// the GPU layout of the `paper` and `polar37` shapes (bits 4/2/2/2 or 4/3/3/3/3/3, fp16 radii,
// 32-token pages, head_dim 64, 128 or 256; docs/FORMAT.md section 4.1), the fastest for
// decode_attention; the same codes and radii, in 16 * head_dim bytes per head region.
enum class PageLayout { kHost, kPairs };

// kPairs where the codec and page size have it, else kHost (no device needed).
PageLayout fastest_page_layout(const PolarConfig& config, int page_tokens);
// Bytes of one head region of a page in `layout` (no device needed); throws Error(kUnsupported)
// for kPairs where the codec has no such layout.
size_t device_head_bytes(const PolarConfig& config, int page_tokens, PageLayout layout);

// A PolarCodec's constants on the device (rotation matrix, cos/sin tables, decision boundaries)
// plus the page geometry. Supported: levels 4..8, dim 64, 128 or 256, page_tokens a multiple of
// 32 (one warp lane per token slot), n_kv_heads >= 1, PageLayout::kPairs where
// fastest_page_layout gives it. Throws Error(kUnsupported) otherwise and Error(kState) when no
// device is available.
class CudaPolarCodec {
 public:
  CudaPolarCodec(const PolarCodec& codec, int page_tokens, int n_kv_heads,
                 PageLayout layout = PageLayout::kHost);
  ~CudaPolarCodec();
  CudaPolarCodec(const CudaPolarCodec&) = delete;
  CudaPolarCodec& operator=(const CudaPolarCodec&) = delete;

  int dim() const;
  int page_tokens() const;
  int n_kv_heads() const;
  PageLayout layout() const;
  // PolarPageFormat::head_bytes() for the same codec and T in the host layout; 16 * dim in kPairs.
  size_t head_bytes() const;
  size_t page_bytes() const { return head_bytes() * static_cast<size_t>(n_kv_heads()); }
  const DeviceCodec& device() const { return *device_; }
  // The constructor sets its kernels' shared-memory limits and measures their occupancy once, so
  // that encode, dequantize and decode calls make no CUDA API calls but their launches.
  int multiprocessors() const { return multiprocessors_; }

 private:
  std::unique_ptr<DeviceCodec> device_;
  void* constants_ = nullptr;  // one cudaMalloc holding every table
  int multiprocessors_ = 0;
};

// One sequence's pages: page i of the sequence (positions [i*T, (i+1)*T)) is page
// page_table[i] of the pool, at pool + page_table[i] * page_bytes().
struct SequencePages {
  uint8_t* pool = nullptr;              // device
  const int32_t* page_table = nullptr;  // device
};

// Encodes positions [first, first + n) of one sequence. x (device): n x n_kv_heads x dim floats,
// token-major, finite (not checked: the caller validates, as the CPU cache does). With
// rotated_input, x already holds S x (S folded into the V projection; for keys of a model with
// RoPE, applied by the producer after RoPE), and the rotation is skipped. The target slots must be
// zero (fresh pages), as in the CPU cache.
void encode_prefill(const CudaPolarCodec& codec, const SequencePages& pages, size_t first, size_t n,
                    const float* x, bool rotated_input, Stream stream);

// Appends one token to each of `batch` sequences: sequence b's page table is row b of
// page_tables (device, batch x max_pages) and its token goes to position positions[b] (device).
// x (device): batch x n_kv_heads x dim.
void encode_append(const CudaPolarCodec& codec, uint8_t* pool, const int32_t* page_tables,
                   int max_pages, const int32_t* positions, int batch, const float* x,
                   bool rotated_input, Stream stream);

// Reconstructs positions [first, first + n) of one sequence into out (device, n x n_kv_heads x
// dim): in the original domain (like PolarPageFormat::load) or, with rotated_output, as S x.
void dequantize(const CudaPolarCodec& codec, const SequencePages& pages, size_t first, size_t n,
                float* out, bool rotated_output, Stream stream);

// Rewrites `count` whole pages (device, page after page) from the host layout into the codec's
// layout (to_codec_layout) or back; src and dst must not overlap and hold count pages of their
// layout (the host layout's head bytes: PolarPageFormat::head_bytes()). Codes and radii move
// unchanged; for a codec in kHost this is a copy. The host-memory twin is
// polarquant::pages_to_pair_layout / pages_from_pair_layout (src/cache/pair_layout.h).
void convert_pages(const CudaPolarCodec& codec, const uint8_t* src, uint8_t* dst, size_t count,
                   bool to_codec_layout, Stream stream);

// Decode attention of one query token per sequence over paged PolarQuant K and V (one layer).
struct DecodeBatch {
  const uint8_t* k_pool = nullptr;       // device
  const uint8_t* v_pool = nullptr;       // device
  const int32_t* page_tables = nullptr;  // device, batch x max_pages (K and V share page ids)
  int max_pages = 0;                     // row stride of page_tables
  const int32_t* lengths = nullptr;      // device, tokens per sequence (0 gives a zero output)
  int batch = 0;
  int max_length = 0;  // host-side bound on lengths: sizes the split grid
  int n_q_heads = 0;   // a multiple of n_kv_heads, at most 16 per KV head
  float scale = 0.0f;  // 0: 1/sqrt(dim)
  // Optional (device, batch x n_q_heads): ln sum_t exp(scale q.k_t) per query head, -inf for an
  // empty sequence; what merging this attention with another part of the context needs.
  float* lse = nullptr;
  // Optional (device, batch x max_pages x n_q_heads): added to q.k of every token of page
  // (sequence b, page pg) for query head h, before the scale: per-page key shifts that the codes
  // leave out (RoPE-aware key centering, src/cuda_model/rope_shift.h). Null: no bias.
  const float* page_bias = nullptr;
};

// Which attention kernel decode_attention runs for this codec and query-head count:
// "paper-pairs" or "polar37-pairs" (PageLayout::kPairs), "paper-fragments" or "polar37-fragments"
// (the host layouts), all four decoded into tensor-core operands in registers, else the tile kernel
// with its decoder: "tile-wide3" or "tile-generic". Throws as decode_attention does for the
// query-head count: kInvalidArgument unless a positive multiple of n_kv_heads, kUnsupported above
// 16 per KV head.
const char* decode_kernel_name(const CudaPolarCodec& codec, int n_q_heads);

// Bytes of workspace decode_attention needs for this shape (256-byte aligned pieces); enough also
// for the same batch with any shorter max_length.
size_t decode_workspace_bytes(const CudaPolarCodec& codec, const DecodeBatch& batch);

// q (device): batch x n_q_heads x dim floats; out (device): the same shape. Query head h uses
// KV head h / (n_q_heads / n_kv_heads). Runs three kernels: rotate q once, split-KV attention
// in the rotated domain (scores and P.V on tensor cores, decode_kernel_name says over what), and a
// merge of the partial softmax states that applies S^T once per output.
void decode_attention(const CudaPolarCodec& codec, const DecodeBatch& batch, const float* q,
                      float* out, void* workspace, size_t workspace_bytes, Stream stream);

// The same over keys and values of different codecs (polar4kv: keys `polar-544444`, values
// `polar-422222`): batch.k_pool holds pages of `keys`' layout, batch.v_pool of `values'`, under the
// same page ids. Scores run in the keys' rotated domain, outputs return from the values'. The two
// codecs must have the same dim, KV heads and page tokens (kInvalidArgument). Passing one codec
// twice is the call above. The tile kernel runs for a pair ("tile-wide5-narrow2" for polar4kv's,
// else "tile-wide3" or "tile-generic"); its first call (or decode_workspace_bytes) for a new pair
// sets up that kernel's shared memory, the only CUDA API calls besides the launches.
const char* decode_kernel_name(const CudaPolarCodec& keys, const CudaPolarCodec& values,
                               int n_q_heads);
size_t decode_workspace_bytes(const CudaPolarCodec& keys, const CudaPolarCodec& values,
                              const DecodeBatch& batch);
void decode_attention(const CudaPolarCodec& keys, const CudaPolarCodec& values,
                      const DecodeBatch& batch, const float* q, float* out, void* workspace,
                      size_t workspace_bytes, Stream stream);

}  // namespace polarquant::cuda
