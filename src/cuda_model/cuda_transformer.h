// The Llama forward pass on one CUDA GPU, behind model::Runtime: weights in GPU memory as fp16
// (dequantized once from the GGUF / llama2.c file, or random for speed runs), GEMMs through cuBLAS
// with fp32 accumulation and an fp32 residual stream, the KV cache in GPU pages (DeviceKvCodec:
// f16 or PolarQuant), prefill attention over the dequantized cache (as the CPU runtime and
// llama.cpp do), and batched decode through the fused decode kernels. Plain C++ header: no CUDA
// header is needed to use it. Design: docs/design/runtime.md, section "GPU".
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/runtime.h"

namespace polarquant::cuda {

// Makes make_runtime() build a CudaTransformer for device "cuda".
void register_cuda_runtime();

// What a request needs in GPU memory, and how many tokens each codec pair could hold.
struct MemoryPlan {
  size_t free_bytes = 0;          // cudaMemGetInfo's free memory before anything is allocated
  size_t weight_bytes = 0;        // fp16 weights + fp32 embedding table and norms
  size_t scratch_bytes = 0;       // activations, attention scratch, decode workspace
  size_t kv_bytes_per_token = 0;  // K + V pages of every layer, per token
  size_t kv_bytes = 0;            // the pool for max_sequences x max_context
  size_t required_bytes() const { return weight_bytes + scratch_bytes + kv_bytes; }
  // Tokens (summed over sequences) whose pages fit beside the weights and scratch.
  size_t max_tokens() const;
};

// The plan for a model shape and options (codecs, max_sequences, max_context, prefill_chunk).
// Needs a device (Error kState otherwise); allocates nothing.
MemoryPlan plan_memory(const model::LlamaConfig& config, const model::RuntimeOptions& options);

class CudaTransformer final : public model::Runtime {
 public:
  // From a loaded model; the model may be released afterwards (weights are copied). Throws
  // InvalidArgument when the request does not fit the GPU's free memory (before allocating),
  // Unsupported for codecs or options the GPU path does not have.
  CudaTransformer(const model::LlamaModel& model, const model::RuntimeOptions& options);
  // Random fp16 weights of the given shape (seeded): for speed measurements only.
  CudaTransformer(const model::LlamaConfig& config, uint64_t weight_seed,
                  const model::RuntimeOptions& options);
  ~CudaTransformer() override;

  const model::LlamaConfig& config() const override;
  const model::RuntimeOptions& options() const override;
  std::string device_name() const override;
  SequenceId add_sequence() override;
  void free_sequence(SequenceId seq) override;
  size_t position(SequenceId seq) const override;
  void forward(SequenceId seq, const int* tokens, size_t n, std::vector<float>& logits,
               bool all_logits) override;
  void forward_batch(const SequenceId* seqs, const int* tokens, size_t batch,
                     std::vector<float>& logits) override;
  KvMemoryStats memory() const override;

  // One decode step of `batch` sequences, choosing each next token greedily on the GPU (only the
  // token ids come back): what bench-serve runs.
  void decode_greedy(const SequenceId* seqs, const int* tokens, size_t batch, int* next);
  // Which attention decode uses for this runtime's K/V pair: a fused kernel's name, or
  // "dequantize+cublas" for pairs without one.
  std::string decode_path() const;
  const MemoryPlan& plan() const;
  // Waits for the GPU (for timing).
  void synchronize() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace polarquant::cuda
