// CudaTransformer's state, shared by cuda_transformer.cu (the forward pass and page pool) and
// cuda_runtime_setup.cu (memory plan, construction).
#pragma once

#include <polarquant/cuda.h>

#include <cuda_fp16.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cuda_model/cuda_transformer.h"
#include "cuda_model/dense_attention.h"
#include "cuda_model/device_buffer.h"
#include "cuda_model/device_kv.h"
#include "cuda_model/device_weights.h"
#include "cuda_model/f16_kv.h"
#include "cuda_model/model_kernels.h"

namespace polarquant::cuda {

enum class DecodeKind { kF16, kPolar, kDense };

struct CudaTransformer::Impl {
  struct Seq {
    int slot = 0;  // row of the key means
    size_t length = 0;
    std::vector<int32_t> pages;  // page ids, position p in page pages[p / page_tokens]
  };

  model::LlamaConfig config;
  model::RuntimeOptions options;
  std::string gpu_name;
  int multiprocessors = 0;
  MemoryPlan plan;
  cudaStream_t stream = nullptr;
  cublasContext* cublas = nullptr;
  DeviceWeights weights;
  DeviceBuffer<float> inv_freq;

  // The page pool: n_layers pools of total_pages pages each, for K and for V.
  int page_tokens = 32;
  int max_pages = 0;  // per sequence
  int total_pages = 0;
  size_t max_context = 0;
  std::unique_ptr<DeviceKvCodec> kcodec, vcodec;
  DecodeKind decode_kind = DecodeKind::kDense;
  std::string decode_name;
  DeviceBuffer<uint8_t> k_pool, v_pool;
  std::vector<int32_t> free_pages;
  std::vector<int> free_slots;
  std::map<SequenceId, Seq> seqs;
  SequenceId next_id = 0;
  DeviceBuffer<float> means;  // [slot][layer][kv_dim]

  // Activations for up to max_rows rows (a prefill chunk or a decode batch).
  int max_rows = 0;
  DeviceBuffer<float> x, q, k, v, att, gate, up, logits;
  DeviceBuffer<__half> xn, att_half, hidden;
  std::unique_ptr<DenseAttention> dense;
  DeviceBuffer<__half> k_half, v_half;  // [kv_head][max_context][head_dim]
  DeviceBuffer<float> dequant;          // max_context x kv_dim
  DeviceBuffer<uint8_t> decode_ws;
  DeviceBuffer<int32_t> dev_stage, next_tokens;
  int32_t* host_stage = nullptr;  // pinned

  Impl(const model::LlamaConfig& c, const model::RuntimeOptions& o);
  ~Impl();
  void allocate();

  Seq& sequence(SequenceId id, const char* caller);
  const Seq& sequence(SequenceId id, const char* caller) const {
    return const_cast<Impl*>(this)->sequence(id, caller);
  }
  std::vector<int32_t> reserve_pages(Seq* const* list, const size_t* grow, size_t count);
  std::vector<Seq*> batch_list(const SequenceId* ids, const int* tokens, size_t batch);
  void step(Seq* const* list, bool batch, const int* tokens, int rows, int first_logit);
  void decode_attention_step(const uint8_t* kp, const uint8_t* vp, const int32_t* d_tables,
                             const int32_t* d_lengths, const int32_t* h_lengths, int batch,
                             int max_length);
  void gemm(const __half* w, int out, int in, const __half* x, int rows, float* y, bool accumulate);
  void copy_logits(float* out, int rows);
};

}  // namespace polarquant::cuda
