// CudaTransformer's cache traffic within one layer of a step: storing the step's K/V (pages and
// full-precision windows), prefill attention over the dequantized cache, and batched decode
// attention (fused kernels merged with the windows, or the dense fallback).
#include <polarquant/error.h>

#include <algorithm>

#include "cuda_model/runtime_impl.h"

namespace polarquant::cuda {

size_t CudaTransformer::Impl::layer_pool_bytes(const DeviceKvCodec& codec) const {
  return static_cast<size_t>(total_pages + 1) * codec.page_bytes();  // + the spare page
}

uint8_t* CudaTransformer::Impl::layer_pool(DeviceBuffer<uint8_t>& pool, const DeviceKvCodec& codec,
                                           int layer) {
  return pool.get() + static_cast<size_t>(layer) * layer_pool_bytes(codec);
}

// The step's K/V of layer l: codes of every position past the sink (a prefill's rows inside the
// sink are skipped; a decode row inside it writes to the spare page), and the window rows.
void CudaTransformer::Impl::store_kv(int l, size_t first, bool batch, int rows,
                                     const StepInputs& in, const float* keys) {
  uint8_t* kp = layer_pool(k_pool, *kcodec, l);
  uint8_t* vp = layer_pool(v_pool, *vcodec, l);
  const size_t kvd = static_cast<size_t>(config.kv_dim());
  const size_t sink = static_cast<size_t>(window.sink);
  if (batch) {
    kcodec->store(kp, in.tables, max_pages, in.code_positions, true, 0, rows, keys, stream);
    vcodec->store(vp, in.tables, max_pages, in.code_positions, true, 0, rows, v.get(), stream);
  } else {
    const size_t skip = std::min(static_cast<size_t>(rows), first < sink ? sink - first : 0);
    const size_t code_first = first + skip - sink;
    const int n = rows - static_cast<int>(skip);
    kcodec->store(kp, in.tables, max_pages, nullptr, false, code_first, n, keys + skip * kvd,
                  stream);
    vcodec->store(vp, in.tables, max_pages, nullptr, false, code_first, n, v.get() + skip * kvd,
                  stream);
  }
  const long keep_from =
      batch ? 0 : static_cast<long>(first) + rows - static_cast<long>(window.recent);
  window_store(window, win_k.get(), win_v.get(), l, k.get(), v.get(), rows, in.positions, in.slots,
               keep_from, stream);
}

// Keys and values of positions [0, keys) of sequence s at layer l as head-major halves in the
// layer's dense buffers: codes dequantized, window rows laid over them. The buffers remember whose
// rows they hold, so a sequence's next prefill chunk (or dense decode step) dequantizes only the
// rows it has not yet, plus those the recent window covered last time.
const __half* CudaTransformer::Impl::dense_keys(const Seq& s, int l, const int32_t* table,
                                                size_t keys, const __half** values) {
  const size_t stride = max_context;
  const size_t layer_halves = static_cast<size_t>(config.kv_dim()) * stride;
  __half* kh = dense_k.get() + l * layer_halves;
  __half* vh = dense_v.get() + l * layer_halves;
  DenseRows& rows = dense_rows[l];
  const size_t valid = rows.seq == s.id ? std::min(rows.valid, keys) : 0;
  const size_t sink = static_cast<size_t>(window.sink);
  const size_t code_from = std::max(valid, sink) - sink;
  const size_t code_to = keys > sink ? keys - sink : 0;
  if (code_to > code_from) {
    const int n = static_cast<int>(code_to - code_from);
    const size_t head_dim = static_cast<size_t>(config.head_dim);
    kcodec->load_half(layer_pool(k_pool, *kcodec, l), table, code_from, n, stride,
                      kh + sink * head_dim, dequant.get(), stream);
    if (rope_shift.enabled()) {  // the pages' key shifts back (rope_shift.h)
      const size_t means_at = (static_cast<size_t>(s.slot) * config.n_layers + l) * config.kv_dim();
      rope_shift.add(kh + (sink + code_from) * head_dim, stride, code_from, n,
                     means_pre.get() + means_at, means.get() + means_at, stream);
    }
    vcodec->load_half(layer_pool(v_pool, *vcodec, l), table, code_from, n, stride,
                      vh + sink * head_dim, dequant.get(), stream);
  }
  window_overlay(window, win_k.get(), win_v.get(), l, s.slot, keys, stride, kh, vh, stream);
  rows.seq = s.id;
  rows.valid = keys > static_cast<size_t>(window.recent) ? keys - window.recent : 0;
  *values = vh;
  return kh;
}

void CudaTransformer::Impl::prefill_attention(const Seq& s, int l, int rows, const int32_t* table) {
  const size_t first = s.length, keys = first + rows;
  const __half* vh = nullptr;
  const __half* kh = dense_keys(s, l, table, keys, &vh);
  dense->run(cublas, q.get(), rows, first, kh, vh, max_context, keys, att.get(), stream);
}

void CudaTransformer::Impl::decode_attention_step(int l, Seq* const* list, int batch,
                                                  const StepInputs& in) {
  const model::LlamaConfig& c = config;
  if (decode_kind == DecodeKind::kDense) {
    const size_t qd = c.q_dim();
    for (int r = 0; r < batch; ++r) {
      const size_t keys = list[r]->length + 1;
      const __half* vh = nullptr;
      const __half* kh =
          dense_keys(*list[r], l, in.tables + static_cast<size_t>(r) * max_pages, keys, &vh);
      dense->run(cublas, q.get() + r * qd, 1, keys - 1, kh, vh, max_context, keys,
                 att.get() + r * qd, stream);
    }
    return;
  }
  DecodeBatch b;
  b.k_pool = layer_pool(k_pool, *kcodec, l);
  b.v_pool = layer_pool(v_pool, *vcodec, l);
  b.page_tables = in.tables;
  b.max_pages = max_pages;
  b.lengths = in.code_lengths;
  b.batch = batch;
  b.max_length = in.max_code_length;
  b.n_q_heads = c.n_heads;
  b.lse = window.empty() ? nullptr : lse.get();
  if (rope_shift.enabled()) {  // what the pages' key shifts take from each page's scores
    const size_t layer_means = static_cast<size_t>(l) * c.kv_dim();
    rope_shift.page_bias(q.get(), batch, c.n_heads, in.slots, in.code_lengths, in.max_code_length,
                         means_pre.get() + layer_means, means.get() + layer_means,
                         static_cast<size_t>(c.n_layers) * c.kv_dim(), max_pages, page_bias.get(),
                         stream);
    b.page_bias = page_bias.get();
  }
  if (decode_kind == DecodeKind::kF16) {
    f16_decode_attention(kcodec->f16(), b, q.get(), att.get(), decode_ws.get(), decode_ws.bytes(),
                         multiprocessors, stream);
  } else {
    decode_attention(*kcodec->polar(), *decode_values()->polar(), b, q.get(), att.get(),
                     decode_ws.get(), decode_ws.bytes(), stream);
  }
  window_decode_merge(window, win_k.get(), win_v.get(), l, q.get(), batch, c.n_heads, in.slots,
                      in.lengths, 1.0f / std::sqrt(static_cast<float>(c.head_dim)), lse.get(),
                      att.get(), stream);
}

}  // namespace polarquant::cuda
