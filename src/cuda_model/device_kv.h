// The KV cache of the CUDA runtime: per layer one page pool for keys and one for values (fp16 or
// PolarQuant pages, docs/FORMAT.md section 4), pages handed to sequences from a free list (a page
// id holds the same positions in every layer), key centering as the CPU cache does it, and the
// attention over the pages: fused decode kernels where the K/V pair has one, else dequantize into
// contiguous halves and attend with cuBLAS (DenseAttention), which is also the prefill path.
#pragma once

#include <polarquant/cuda.h>
#include <polarquant/kv_cache.h>

#include <cuda_fp16.h>

#include <memory>
#include <string>
#include <vector>

#include "cuda_model/device_buffer.h"
#include "cuda_model/f16_kv.h"
#include "model/llama_model.h"

namespace polarquant::cuda {

// One of K or V: fp16 pages or a PolarQuant preset's pages.
class DeviceKvCodec {
 public:
  // Throws Unsupported for codecs without CUDA kernels (peers, f32) and for head dims the
  // PolarQuant kernels do not take.
  DeviceKvCodec(const std::string& name, int head_dim, int n_kv_heads, int page_tokens,
                uint64_t seed, bool need_device);
  // Bytes of one page (all KV heads) without building anything on the device.
  static size_t page_bytes_of(const std::string& name, int head_dim, int n_kv_heads,
                              int page_tokens, uint64_t seed);

  const std::string& name() const { return name_; }
  bool is_f16() const { return polar_ == nullptr; }
  const CudaPolarCodec* polar() const { return polar_.get(); }
  const F16Layout& f16() const { return f16_; }
  size_t page_bytes() const { return page_bytes_; }

  // Rows r < n of x (token-major floats): one sequence at positions first + r (table: its row), or
  // with batch_rows, row r of page_tables at positions[r].
  void store(uint8_t* pool, const int32_t* page_tables, int max_pages, const int32_t* positions,
             bool batch_rows, size_t first, int n, const float* x, Stream stream) const;
  // Positions [first, first + n) of one sequence into the same rows of out, halves
  // [n_kv_heads][stride][head_dim]; scratch holds n x n_kv_heads x head_dim floats (PolarQuant
  // dequantizes into it first).
  void load_half(const uint8_t* pool, const int32_t* table, size_t first, int n, size_t stride,
                 __half* out, float* scratch, Stream stream) const;

 private:
  std::string name_;
  std::unique_ptr<CudaPolarCodec> polar_;
  F16Layout f16_;
  size_t page_bytes_ = 0;
};

// Bytes per token of all layers' K and V pages, and the decode kernel a K/V pair gets.
size_t kv_bytes_per_token(const model::LlamaConfig& c, const std::string& key_codec,
                          const std::string& value_codec, int page_tokens, uint64_t seed);

}  // namespace polarquant::cuda
