// A Llama model's weights in GPU memory: matrices as fp16 (dequantized once from any ggml type the
// CPU runtime reads), norms and the embedding table as fp32 (a token's embedding is then the CPU's
// exactly), the output head as fp16 (the embedding table again when tied).
#pragma once

#include <cuda_fp16.h>

#include <cstdint>
#include <vector>

#include "cuda_model/device_buffer.h"
#include "model/llama_model.h"

namespace polarquant::cuda {

struct DeviceLayer {
  DeviceBuffer<float> attn_norm, ffn_norm;
  DeviceBuffer<__half> wq, wk, wv, wo, w_gate, w_up, w_down;
};

struct DeviceWeights {
  DeviceBuffer<float> embedding;  // vocab x dim
  DeviceBuffer<float> final_norm;
  DeviceBuffer<__half> output;  // vocab x dim
  std::vector<DeviceLayer> layers;

  // Bytes the weights of this shape take on the GPU.
  static size_t bytes_for(const model::LlamaConfig& c);
  static DeviceWeights upload(const model::LlamaModel& model);
  // Uniform weights with the variance of 1/fan_in, unit norms (speed runs only).
  static DeviceWeights random(const model::LlamaConfig& c, uint64_t seed);
};

}  // namespace polarquant::cuda
