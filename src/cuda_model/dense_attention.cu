#include "cuda_model/dense_attention.h"

#include <polarquant/error.h>

#include <cublas_v2.h>

#include <cmath>
#include <string>

#include "cuda_model/model_kernels.h"

namespace polarquant::cuda {

namespace {
size_t round8(size_t n) {
  return (n + 7) / 8 * 8;
}
}  // namespace

void check_cublas(int status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  throw Error(ErrorKind::kState, std::string("cuBLAS: ") + what + " failed: " +
                                     cublasGetStatusString(static_cast<cublasStatus_t>(status)));
}

size_t DenseAttention::bytes_for(int n_heads, int head_dim, int max_rows, size_t max_keys) {
  const size_t rows = static_cast<size_t>(n_heads) * max_rows;
  return static_cast<size_t>(max_rows) * n_heads * head_dim * sizeof(__half) +
         rows * round8(max_keys) * (sizeof(float) + sizeof(__half));
}

DenseAttention::DenseAttention(int n_heads, int n_kv_heads, int head_dim, int max_rows,
                               size_t max_keys)
    : n_heads_(n_heads),
      n_kv_heads_(n_kv_heads),
      head_dim_(head_dim),
      max_rows_(max_rows),
      max_keys_(max_keys) {
  const size_t rows = static_cast<size_t>(n_heads) * max_rows;
  q_half_.allocate(static_cast<size_t>(max_rows) * n_heads * head_dim, "cudaMalloc(attention q)");
  scores_.allocate(rows * round8(max_keys), "cudaMalloc(attention scores)");
  probs_.allocate(rows * round8(max_keys), "cudaMalloc(attention probabilities)");
}

DenseAttention::~DenseAttention() = default;

void DenseAttention::run(cublasContext* handle, const float* q, int rows, size_t first,
                         const __half* k, const __half* v, size_t stride, size_t keys, float* out,
                         cudaStream_t stream) {
  if (rows <= 0 || rows > max_rows_ || keys > max_keys_ || keys == 0 || first + rows > keys) {
    throw_invalid("DenseAttention: " + std::to_string(rows) + " rows over " + std::to_string(keys) +
                  " keys exceed the sizes it was built for (" + std::to_string(max_rows_) +
                  " rows, " + std::to_string(max_keys_) + " keys)");
  }
  const int d = head_dim_, g = n_heads_ / n_kv_heads_;
  const size_t ld = round8(keys);
  to_half(q, static_cast<size_t>(rows) * n_heads_ * d, q_half_.get(), stream);
  check_cublas(cublasSetStream(handle, stream), "cublasSetStream");
  const float one = 1.0f, zero = 0.0f;
  const long long group_scores = static_cast<long long>(g) * rows * ld;
  for (int j = 0; j < g; ++j) {
    // scores[h*g+j][t][s] = sum_e q[t][h*g+j][e] k[h][s][e]  (column-major: keys x rows)
    check_cublas(
        cublasGemmStridedBatchedEx(
            handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(keys), rows, d, &one, k, CUDA_R_16F,
            d, static_cast<long long>(stride) * d, q_half_.get() + j * d, CUDA_R_16F, n_heads_ * d,
            static_cast<long long>(g) * d, &zero,
            scores_.get() + static_cast<size_t>(j) * rows * ld, CUDA_R_32F, static_cast<int>(ld),
            group_scores, n_kv_heads_, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "attention scores GEMM");
  }
  causal_softmax(scores_.get(), n_heads_, rows, static_cast<int>(keys), ld, first,
                 1.0f / std::sqrt(static_cast<float>(d)), probs_.get(), stream);
  for (int j = 0; j < g; ++j) {
    // out[t][h*g+j][e] = sum_s p[h*g+j][t][s] v[h][s][e]  (column-major: dims x rows)
    check_cublas(
        cublasGemmStridedBatchedEx(
            handle, CUBLAS_OP_N, CUBLAS_OP_N, d, rows, static_cast<int>(keys), &one, v, CUDA_R_16F,
            d, static_cast<long long>(stride) * d,
            probs_.get() + static_cast<size_t>(j) * rows * ld, CUDA_R_16F, static_cast<int>(ld),
            group_scores, &zero, out + j * d, CUDA_R_32F, n_heads_ * d,
            static_cast<long long>(g) * d, n_kv_heads_, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "attention P.V GEMM");
  }
}

}  // namespace polarquant::cuda
