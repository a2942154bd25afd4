// The kernels' view of a PolarQuant codec and its page geometry: a plain struct passed to every
// kernel by value (kernel parameter space), pointing at constant tables in device memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace polarquant::cuda {

inline constexpr int kMaxLevels = 8;

struct DeviceCodec {
  int dim = 0;
  int levels = 0;
  int page_tokens = 0;
  int n_kv_heads = 0;
  int radius_kind = 0;  // 0 fp16, 1 bf16, 2 fp32 (RadiusPrecision order)
  int radius_bytes = 2;
  int bits[kMaxLevels] = {};
  int table_offset[kMaxLevels] = {};  // first entry of level l's tables (2^bits entries each)
  int table_entries = 0;              // sum of 2^bits over the levels
  uint32_t level_offset[kMaxLevels] = {};
  uint32_t field_bytes[kMaxLevels] = {};
  uint32_t radii_offset = 0;     // the radii and fields above: the host layout's places
  uint32_t head_bytes = 0;       // a region in this codec's layout
  uint32_t host_head_bytes = 0;  // a region in the host layout
  bool pairs = false;            // PageLayout::kPairs (src/cache/pair_layout.h) instead of host
  uint64_t page_bytes = 0;
  // Device tables (one allocation owned by CudaPolarCodec).
  const float* rotation = nullptr;    // S, row-major dim x dim
  const float* rotation_t = nullptr;  // S^T, row-major
  const float* cos_table = nullptr;   // table_entries: cos of level l's centroid c at offset + c
  const float* sin_table = nullptr;
  const float* boundaries = nullptr;  // table_entries: level l's decision boundaries (2^b - 1)
  const float* centroids = nullptr;   // table_entries
  // The CPU encoder's atan2-free quantization (PolarCodec::quantize_rotated): cos and sin of
  // each level's boundaries, level 1's folded into [0, pi) with the first level1_upper of them
  // lying in [0, pi).
  const float* boundary_cos = nullptr;  // table_entries
  const float* boundary_sin = nullptr;
  int level1_upper = 0;
  // Consecutive level-1 boundaries at least 1e-3 rad apart: the boundary tests are monotone
  // beyond float rounding, and the encoder may binary-search them (same codes as counting).
  bool level1_search = false;
};

// Throws Error(kState) naming `what` when a CUDA call or launch failed (code != 0).
void check_cuda(int code, const char* what);

// Raises a kernel's dynamic shared-memory allowance to at least `bytes` and never lowers it. Codecs
// of different table sizes share one kernel instance (polar4kv's key and value codecs; several
// runtimes in one process), so the allowance one codec set up must survive the next codec's setup:
// setting it outright let the smaller codec configured last make the larger one's launches fail
// with cudaErrorInvalidValue.
void allow_dynamic_smem(const void* kernel, size_t bytes, const char* what);
template <typename Kernel>
void allow_dynamic_smem(Kernel* kernel, size_t bytes, const char* what) {
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), bytes, what);
}

}  // namespace polarquant::cuda
