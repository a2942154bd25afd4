// Attention of a block of query rows over contiguous fp16 keys and values with cuBLAS: scores on
// tensor cores (one strided-batched GEMM per query head of a KV group), a causal softmax, then
// P.V the same way. The CUDA runtime's prefill path (queries at positions first .. first + rows - 1
// see keys [0, first + row]), and its decode path for K/V pairs without a fused decode kernel.
#pragma once

#include <cuda_fp16.h>

#include <cstddef>

#include "cuda_model/device_buffer.h"

struct cublasContext;

namespace polarquant::cuda {

class DenseAttention {
 public:
  DenseAttention(int n_heads, int n_kv_heads, int head_dim, int max_rows, size_t max_keys);
  ~DenseAttention();
  DenseAttention(const DenseAttention&) = delete;
  DenseAttention& operator=(const DenseAttention&) = delete;

  // Scratch bytes for this shape (what the constructor allocates).
  static size_t bytes_for(int n_heads, int head_dim, int max_rows, size_t max_keys);

  // q: rows x n_heads x head_dim floats; k, v: [n_kv_heads][stride][head_dim] halves holding keys
  // [0, keys); out: rows x n_heads x head_dim floats.
  void run(cublasContext* handle, const float* q, int rows, size_t first, const __half* k,
           const __half* v, size_t stride, size_t keys, float* out, cudaStream_t stream);

 private:
  int n_heads_, n_kv_heads_, head_dim_, max_rows_;
  size_t max_keys_;
  DeviceBuffer<__half> q_half_;
  DeviceBuffer<float> scores_;
  DeviceBuffer<__half> probs_;
};

// cuBLAS status to polarquant::Error(kState) naming the call.
void check_cublas(int status, const char* what);

}  // namespace polarquant::cuda
