// CudaTransformer: the forward pass (layers, prefill and batched decode steps) and the page pool.
// Memory planning and construction are in cuda_runtime_setup.cu.
#include "cuda_model/cuda_transformer.h"

#include <polarquant/error.h>

#include <cublas_v2.h>

#include <algorithm>
#include <cstring>

#include "cuda_model/runtime_impl.h"

namespace polarquant::cuda {

using model::LlamaConfig;

void CudaTransformer::Impl::gemm(const __half* w, int out, int in, const __half* x, int rows,
                                 float* y, bool accumulate) {
  const float one = 1.0f, zero = 0.0f;
  check_cublas(cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, &one, w, CUDA_R_16F,
                            in, x, CUDA_R_16F, in, accumulate ? &one : &zero, y, CUDA_R_32F, out,
                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "weight GEMM");
}

CudaTransformer::Impl::Seq& CudaTransformer::Impl::sequence(SequenceId id, const char* caller) {
  const auto it = seqs.find(id);
  if (it == seqs.end()) {
    throw_state(std::string(caller) + ": sequence " + std::to_string(id) +
                " does not exist (never added, or freed)");
  }
  return it->second;
}

// Gives every sequence of the step the pages its new length needs; all or nothing.
std::vector<int32_t> CudaTransformer::Impl::reserve_pages(Seq* const* list, const size_t* grow,
                                                          size_t count) {
  size_t needed = 0;
  for (size_t i = 0; i < count; ++i) {
    const size_t pages = (list[i]->length + grow[i] + page_tokens - 1) / page_tokens;
    if (pages > static_cast<size_t>(max_pages)) {
      throw_invalid("sequence of " + std::to_string(list[i]->length + grow[i]) +
                    " tokens exceeds the GPU cache's max_context of " +
                    std::to_string(static_cast<size_t>(max_pages) * page_tokens) +
                    " tokens per sequence (--max-context)");
    }
    needed += pages - list[i]->pages.size();
  }
  if (needed > free_pages.size()) {
    throw_state("the GPU KV cache is full: " + std::to_string(needed) + " more pages needed, " +
                std::to_string(free_pages.size()) + " free of " + std::to_string(total_pages));
  }
  std::vector<int32_t> fresh;
  for (size_t i = 0; i < count; ++i) {
    const size_t pages = (list[i]->length + grow[i] + page_tokens - 1) / page_tokens;
    while (list[i]->pages.size() < pages) {
      list[i]->pages.push_back(free_pages.back());
      fresh.push_back(free_pages.back());
      free_pages.pop_back();
    }
  }
  return fresh;
}

// One forward step over `rows` rows. Prefill: one sequence, rows tokens from its length. Batch:
// row r is one token of list[r]. Logits of rows [first_logit, rows) go to logits_dev.
void CudaTransformer::Impl::step(Seq* const* list, bool batch, const int* tokens, int rows,
                                 int first_logit) {
  const LlamaConfig& c = config;
  const size_t n_seq = batch ? static_cast<size_t>(rows) : 1;
  std::vector<size_t> grow(n_seq, batch ? 1 : static_cast<size_t>(rows));
  const std::vector<int32_t> fresh = reserve_pages(list, grow.data(), n_seq);
  const bool first_append = !batch && list[0]->length == 0;
  const size_t sink = static_cast<size_t>(window.sink);

  // Stage the step's integers in pinned memory, then one copy. A token's codes sit at code
  // position (position - sink) (kv_window.h); a decode row still inside the sink writes its codes
  // to the pool's spare page, which no sequence reads. The previous step's copy must have left
  // host_stage first: the copy is asynchronous, queued behind the previous steps' kernels.
  check_cuda(cudaEventSynchronize(stage_copied), "waiting for the previous step's input copy");
  int32_t* h = host_stage;
  int32_t* h_tokens = h;
  int32_t* h_positions = h_tokens + rows;
  int32_t* h_code_positions = h_positions + rows;
  int32_t* h_slots = h_code_positions + rows;
  int32_t* h_lengths = h_slots + rows;
  int32_t* h_code_lengths = h_lengths + n_seq;
  int32_t* h_fresh = h_code_lengths + n_seq;
  int32_t* h_tables = h_fresh + fresh.size();
  int max_code_length = 0;
  for (int r = 0; r < rows; ++r) {
    const Seq& s = *list[batch ? r : 0];
    const size_t pos = batch ? s.length : s.length + r;
    h_tokens[r] = tokens[r];
    h_positions[r] = static_cast<int32_t>(pos);
    h_code_positions[r] = static_cast<int32_t>(pos >= sink ? pos - sink : 0);
    h_slots[r] = s.slot;
  }
  for (size_t i = 0; i < n_seq; ++i) {
    const size_t length = list[i]->length + grow[i];
    h_lengths[i] = static_cast<int32_t>(length);
    h_code_lengths[i] = static_cast<int32_t>(window.code_tokens(length));
    max_code_length = std::max(max_code_length, h_code_lengths[i]);
    int32_t* table = h_tables + i * max_pages;
    std::memcpy(table, list[i]->pages.data(), list[i]->pages.size() * sizeof(int32_t));
    if (batch && list[i]->length < sink) table[0] = spare_page;
  }
  std::copy(fresh.begin(), fresh.end(), h_fresh);
  const size_t staged = static_cast<size_t>(h_tables + n_seq * max_pages - h);
  check_cuda(
      cudaMemcpyAsync(dev_stage.get(), h, staged * sizeof(int32_t), cudaMemcpyHostToDevice, stream),
      "cudaMemcpyAsync(step inputs)");
  check_cuda(cudaEventRecord(stage_copied, stream), "cudaEventRecord(step inputs copied)");
  StepInputs in;
  in.positions = dev_stage.get() + (h_positions - h);
  in.code_positions = dev_stage.get() + (h_code_positions - h);
  in.slots = dev_stage.get() + (h_slots - h);
  in.lengths = dev_stage.get() + (h_lengths - h);
  in.code_lengths = dev_stage.get() + (h_code_lengths - h);
  in.tables = dev_stage.get() + (h_tables - h);
  in.max_code_length = max_code_length;
  const int32_t* d_tokens = dev_stage.get();
  const int32_t* d_fresh = dev_stage.get() + (h_fresh - h);

  zero_pages(k_pool.get(), layer_pool_bytes(*kcodec), c.n_layers, d_fresh,
             static_cast<int>(fresh.size()), kcodec->page_bytes(), stream);
  zero_pages(v_pool.get(), layer_pool_bytes(*vcodec), c.n_layers, d_fresh,
             static_cast<int>(fresh.size()), vcodec->page_bytes(), stream);

  const int dim = c.dim, qd = c.q_dim(), kvd = c.kv_dim(), hid = c.hidden_dim;
  embed_rows(weights.embedding.get(), d_tokens, rows, dim, x.get(), stream);
  for (int l = 0; l < c.n_layers; ++l) {
    const DeviceLayer& w = weights.layers[l];
    rms_norm_half(x.get(), w.attn_norm.get(), rows, dim, c.rms_eps, xn.get(), stream);
    gemm(w.wq.get(), qd, dim, xn.get(), rows, q.get(), false);
    gemm(w.wk.get(), kvd, dim, xn.get(), rows, k.get(), false);
    gemm(w.wv.get(), kvd, dim, xn.get(), rows, v.get(), false);
    const size_t slot_stride = static_cast<size_t>(c.n_layers) * kvd;
    const size_t layer_means = static_cast<size_t>(l) * kvd;
    if (rope_shift.enabled() && first_append) {  // the mean before RoPE (rope_shift.h)
      column_mean(k.get(), rows, kvd, means_pre.get() + layer_means + list[0]->slot * slot_stride,
                  stream);
    }
    rope_rows(q.get(), rows, c.n_heads, c.head_dim, in.positions, inv_freq.get(), stream);
    rope_rows(k.get(), rows, c.n_kv_heads, c.head_dim, in.positions, inv_freq.get(), stream);
    const float* keys = k.get();  // as encoded into the pages
    if (options.center_keys) {
      float* post = means.get() + layer_means;
      if (first_append) column_mean(k.get(), rows, kvd, post + list[0]->slot * slot_stride, stream);
      subtract_rows(k.get(), rows, kvd, post, in.slots, slot_stride, stream);
      if (rope_shift.enabled()) {
        rope_shift.subtract(k.get(), rows, in.code_positions, in.slots,
                            means_pre.get() + layer_means, post, slot_stride, k_code.get(), stream);
        keys = k_code.get();
      }
    }
    store_kv(l, list[0]->length, batch, rows, in, keys);
    if (batch) {
      decode_attention_step(l, list, rows, in);
    } else {
      prefill_attention(*list[0], l, rows, in.tables);
    }
    to_half(att.get(), static_cast<size_t>(rows) * qd, att_half.get(), stream);
    gemm(w.wo.get(), dim, qd, att_half.get(), rows, x.get(), true);
    rms_norm_half(x.get(), w.ffn_norm.get(), rows, dim, c.rms_eps, xn.get(), stream);
    gemm(w.w_gate.get(), hid, dim, xn.get(), rows, gate.get(), false);
    gemm(w.w_up.get(), hid, dim, xn.get(), rows, up.get(), false);
    silu_gate_half(gate.get(), up.get(), static_cast<size_t>(rows) * hid, hidden.get(), stream);
    gemm(w.w_down.get(), dim, hid, hidden.get(), rows, x.get(), true);
  }
  const int out_rows = rows - first_logit;
  if (out_rows > 0) {
    rms_norm_half(x.get() + static_cast<size_t>(first_logit) * dim, weights.final_norm.get(),
                  out_rows, dim, c.rms_eps, xn.get(), stream);
    gemm(weights.output.get(), c.vocab_size, dim, xn.get(), out_rows, logits.get(), false);
  }
  for (size_t i = 0; i < n_seq; ++i) list[i]->length += grow[i];
}

void CudaTransformer::forward(SequenceId seq, const int* tokens, size_t n,
                              std::vector<float>& logits, bool all_logits) {
  Impl& m = *impl_;
  Impl::Seq& s = m.sequence(seq, "forward");
  model::check_forward_input(m.config, s.length, tokens, n);
  const size_t vocab = static_cast<size_t>(m.config.vocab_size);
  logits.resize(all_logits ? n * vocab : vocab);
  if (n == 1 && s.length > 0) {  // a decode step: the fused kernels
    Impl::Seq* list[1] = {&s};
    m.step(list, true, tokens, 1, 0);
    m.copy_logits(logits.data(), 1);
    return;
  }
  const size_t chunk = static_cast<size_t>(m.max_rows);
  for (size_t start = 0; start < n; start += chunk) {
    const int rows = static_cast<int>(std::min(chunk, n - start));
    const bool last = start + rows == n;
    Impl::Seq* list[1] = {&s};
    if (all_logits) {
      m.step(list, false, tokens + start, rows, 0);
      m.copy_logits(logits.data() + start * vocab, rows);
    } else {
      m.step(list, false, tokens + start, rows, last ? rows - 1 : rows);
      if (last) m.copy_logits(logits.data(), 1);
    }
  }
}

std::vector<CudaTransformer::Impl::Seq*> CudaTransformer::Impl::batch_list(const SequenceId* ids,
                                                                           const int* tokens,
                                                                           size_t batch) {
  if (batch == 0) throw_invalid("forward_batch: empty batch");
  if (batch > static_cast<size_t>(max_rows)) {
    throw_invalid("forward_batch: " + std::to_string(batch) + " sequences exceed the " +
                  std::to_string(max_rows) + " this runtime was sized for (--batch)");
  }
  std::vector<Seq*> list;
  for (size_t b = 0; b < batch; ++b) {
    Seq& s = sequence(ids[b], "forward_batch");
    if (s.length == 0) throw_invalid("forward_batch: a sequence must be prefilled first");
    for (Seq* other : list) {
      if (other == &s) throw_invalid("forward_batch: a sequence appears twice in one batch");
    }
    model::check_forward_input(config, s.length, tokens + b, 1);
    list.push_back(&s);
  }
  return list;
}

void CudaTransformer::forward_batch(const SequenceId* seqs, const int* tokens, size_t batch,
                                    std::vector<float>& logits) {
  Impl& m = *impl_;
  const std::vector<Impl::Seq*> list = m.batch_list(seqs, tokens, batch);
  m.step(list.data(), true, tokens, static_cast<int>(batch), 0);
  logits.resize(batch * static_cast<size_t>(m.config.vocab_size));
  m.copy_logits(logits.data(), static_cast<int>(batch));
}

void CudaTransformer::decode_greedy(const SequenceId* seqs, const int* tokens, size_t batch,
                                    int* next) {
  Impl& m = *impl_;
  const std::vector<Impl::Seq*> list = m.batch_list(seqs, tokens, batch);
  m.step(list.data(), true, tokens, static_cast<int>(batch), 0);
  argmax_rows(m.logits.get(), static_cast<int>(batch), m.config.vocab_size, m.next_tokens.get(),
              m.stream);
  check_cuda(cudaMemcpyAsync(next, m.next_tokens.get(), batch * sizeof(int32_t),
                             cudaMemcpyDeviceToHost, m.stream),
             "cudaMemcpyAsync(next tokens)");
  check_cuda(cudaStreamSynchronize(m.stream), "decode step");
}

void CudaTransformer::Impl::copy_logits(float* out, int rows) {
  check_cuda(cudaMemcpyAsync(out, logits.get(),
                             static_cast<size_t>(rows) * config.vocab_size * sizeof(float),
                             cudaMemcpyDeviceToHost, stream),
             "cudaMemcpyAsync(logits)");
  check_cuda(cudaStreamSynchronize(stream), "forward step");
}

SequenceId CudaTransformer::add_sequence() {
  Impl& m = *impl_;
  if (m.free_slots.empty()) {
    throw_state("add_sequence: all " + std::to_string(m.options.max_sequences) +
                " sequences this runtime was sized for are in use (free one, or raise "
                "max_sequences)");
  }
  const SequenceId id = m.next_id++;
  Impl::Seq s;
  s.id = id;
  s.slot = m.free_slots.back();
  m.free_slots.pop_back();
  m.seqs.emplace(id, std::move(s));
  return id;
}

void CudaTransformer::free_sequence(SequenceId seq) {
  Impl& m = *impl_;
  Impl::Seq& s = m.sequence(seq, "free_sequence");
  m.free_pages.insert(m.free_pages.end(), s.pages.begin(), s.pages.end());
  m.free_slots.push_back(s.slot);
  m.seqs.erase(seq);
}

size_t CudaTransformer::position(SequenceId seq) const {
  return impl_->sequence(seq, "position").length;
}

KvMemoryStats CudaTransformer::memory() const {
  const Impl& m = *impl_;
  KvMemoryStats stats;
  const size_t page = m.kcodec->page_bytes() + m.vcodec->page_bytes();
  const size_t kvd = static_cast<size_t>(m.config.kv_dim());
  const size_t window = 2 * static_cast<size_t>(m.window.rows()) * kvd * sizeof(__half);
  stats.layer_bytes.assign(m.config.n_layers, 0);
  for (const auto& [id, s] : m.seqs) {
    for (size_t& b : stats.layer_bytes)
      b += s.pages.size() * page + window + (m.options.center_keys ? kvd * sizeof(float) : 0) +
           (m.rope_shift.enabled() ? kvd * sizeof(float) : 0);
    stats.tokens += s.length;
    stats.fp16_bytes += s.length * kvd * 2 * sizeof(uint16_t) * m.config.n_layers;
  }
  for (size_t b : stats.layer_bytes) stats.total_bytes += b;
  return stats;
}

}  // namespace polarquant::cuda
