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
#include "cuda_model/kv_window.h"
#include "cuda_model/model_kernels.h"
#include "cuda_model/rope_shift.h"

namespace polarquant::cuda {

enum class DecodeKind { kF16, kPolar, kDense };

struct CudaTransformer::Impl {
  struct Seq {
    SequenceId id = -1;
    int slot = 0;  // row of the key means and the window rows
    size_t length = 0;
    // Page ids: code position i (token sink + i, kv_window.h) in page pages[i / page_tokens].
    std::vector<int32_t> pages;
  };
  // A step's staged integers on the device (step() fills them; rows, or sequences for lengths).
  struct StepInputs {
    const int32_t* positions = nullptr;       // per row
    const int32_t* code_positions = nullptr;  // per row: position - sink (0 inside the sink)
    const int32_t* slots = nullptr;           // per row
    const int32_t* lengths = nullptr;         // per sequence, after the step
    const int32_t* code_lengths = nullptr;    // per sequence: tokens read from the pages
    const int32_t* tables = nullptr;          // per sequence: max_pages page ids
    int max_code_length = 0;
  };
  // Whose rows a layer's dense buffers hold: positions [0, valid) of sequence seq, final (codes
  // dequantized and sink rows laid over; the recent window's rows are redone each time).
  struct DenseRows {
    SequenceId seq = -1;
    size_t valid = 0;
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

  // The page pool: n_layers pools of total_pages + 1 pages each, for K and for V; the last page
  // (spare_page) takes the codes of decode rows inside the sink, and no sequence reads it.
  int page_tokens = 32;
  int max_pages = 0;  // per sequence
  int total_pages = 0;
  int spare_page = 0;
  size_t max_context = 0;
  std::unique_ptr<DeviceKvCodec> kcodec, vcodec;
  DecodeKind decode_kind = DecodeKind::kDense;
  std::string decode_name;
  // The codec decode attention reads the values with: the key codec where the two names agree (one
  // codec object for both lets the `paper` and `polar37` fragment kernels run), else vcodec.
  const DeviceKvCodec* decode_values() const {
    return options.key_codec == options.value_codec ? kcodec.get() : vcodec.get();
  }
  DeviceBuffer<uint8_t> k_pool, v_pool;
  std::vector<int32_t> free_pages;
  std::vector<int> free_slots;
  std::map<SequenceId, Seq> seqs;
  SequenceId next_id = 0;
  DeviceBuffer<float> means;  // [slot][layer][kv_dim]
  // RoPE-aware key centering (rope_shift.h; disabled unless rope_center_keys with lossy keys):
  // the first chunk's key means before RoPE ([slot][layer][kv_dim]), a step's keys as encoded
  // (rows x kv_dim), and decode's per-page score shifts (max_sequences x max_pages x n_heads).
  RopeShift rope_shift;
  DeviceBuffer<float> means_pre, k_code, page_bias;
  WindowLayout window;
  DeviceBuffer<__half> win_k, win_v;  // window rows (kv_window.h)
  DeviceBuffer<float> lse;            // decode: the codes' log-sum-exp per query head

  // Activations for up to max_rows rows (a prefill chunk or a decode batch).
  int max_rows = 0;
  DeviceBuffer<float> x, q, k, v, att, gate, up, logits;
  DeviceBuffer<__half> xn, att_half, hidden;
  std::unique_ptr<DenseAttention> dense;
  // Dense attention's keys and values: [layer][kv_head][max_context][head_dim] halves.
  DeviceBuffer<__half> dense_k, dense_v;
  std::vector<DenseRows> dense_rows;  // per layer
  DeviceBuffer<float> dequant;        // max_context x kv_dim
  DeviceBuffer<uint8_t> decode_ws;
  DeviceBuffer<int32_t> dev_stage, next_tokens;
  int32_t* host_stage = nullptr;  // pinned
  // Recorded after each step's copy out of host_stage: the next step waits for it before writing
  // host_stage again (prefill chunks run without a synchronization between them, and a GPU busy
  // with earlier chunks would otherwise copy the next chunk's inputs for this one).
  cudaEvent_t stage_copied = nullptr;

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
  size_t layer_pool_bytes(const DeviceKvCodec& codec) const;
  uint8_t* layer_pool(DeviceBuffer<uint8_t>& pool, const DeviceKvCodec& codec, int layer);
  void store_kv(int l, size_t first, bool batch, int rows, const StepInputs& in, const float* keys);
  const __half* dense_keys(const Seq& s, int l, const int32_t* table, size_t keys,
                           const __half** values);
  void prefill_attention(const Seq& s, int l, int rows, const int32_t* table);
  void decode_attention_step(int l, Seq* const* list, int batch, const StepInputs& in);
  void gemm(const __half* w, int out, int in, const __half* x, int rows, float* y, bool accumulate);
  void copy_logits(float* out, int rows);
};

}  // namespace polarquant::cuda
