#include "cuda_model/device_weights.h"

#include <polarquant/half.h>

#include <algorithm>
#include <cmath>

#include "cuda_model/model_kernels.h"
#include "model/matmul.h"

namespace polarquant::cuda {

namespace {

DeviceBuffer<__half> upload_matrix(const model::WeightMatrix& w, const char* what) {
  DeviceBuffer<__half> out(static_cast<size_t>(w.rows) * w.cols, what);
  constexpr int64_t kRows = 256;
  std::vector<float> rows(static_cast<size_t>(kRows * w.cols));
  std::vector<uint16_t> halves(rows.size());
  for (int64_t r = 0; r < w.rows; r += kRows) {
    const int64_t n = std::min(kRows, w.rows - r);
    model::dequantize_rows(w, r, n, rows.data());
    const size_t count = static_cast<size_t>(n * w.cols);
    for (size_t i = 0; i < count; ++i) halves[i] = float_to_half(rows[i]);
    check_cuda(cudaMemcpy(out.get() + static_cast<size_t>(r) * w.cols, halves.data(),
                          count * sizeof(uint16_t), cudaMemcpyHostToDevice),
               what);
  }
  return out;
}

DeviceBuffer<float> upload_floats(const float* data, size_t count, const char* what) {
  DeviceBuffer<float> out(count, what);
  check_cuda(cudaMemcpy(out.get(), data, count * sizeof(float), cudaMemcpyHostToDevice), what);
  return out;
}

DeviceBuffer<__half> random_matrix(size_t rows, size_t cols, uint64_t seed) {
  DeviceBuffer<__half> out(rows * cols, "cudaMalloc(random weights)");
  // Uniform on [-a, a) has variance a^2 / 3: a = sqrt(3 / fan_in) gives 1 / fan_in.
  fill_random_half(out.get(), rows * cols, seed, std::sqrt(3.0f / static_cast<float>(cols)),
                   nullptr);
  return out;
}

DeviceBuffer<float> ones(size_t count, uint64_t seed) {
  DeviceBuffer<float> out(count, "cudaMalloc(norm weights)");
  fill_random_float(out.get(), count, seed, 0.0f, 1.0f, nullptr);
  return out;
}

}  // namespace

size_t DeviceWeights::bytes_for(const model::LlamaConfig& c) {
  const size_t dim = c.dim, qd = c.q_dim(), kvd = c.kv_dim(), hid = c.hidden_dim;
  const size_t layer =
      (dim * qd * 2 + dim * kvd * 2 + 3 * dim * hid) * sizeof(__half) + 2 * dim * sizeof(float);
  const size_t vocab = c.vocab_size;
  return layer * c.n_layers + vocab * dim * (sizeof(float) + sizeof(__half)) + dim * sizeof(float);
}

DeviceWeights DeviceWeights::upload(const model::LlamaModel& model) {
  const model::LlamaConfig& c = model.config();
  DeviceWeights w;
  {
    const model::WeightMatrix& e = model.token_embedding();
    std::vector<float> table(static_cast<size_t>(e.rows) * e.cols);
    model::dequantize_rows(e, 0, e.rows, table.data());
    w.embedding = upload_floats(table.data(), table.size(), "cudaMemcpy(embedding)");
  }
  w.final_norm =
      upload_floats(model.final_norm().data(), model.final_norm().size(), "cudaMemcpy(final norm)");
  w.output = upload_matrix(model.output(), "cudaMemcpy(output head)");
  for (int l = 0; l < c.n_layers; ++l) {
    const model::LayerWeights& s = model.layers()[l];
    DeviceLayer d;
    d.attn_norm = upload_floats(s.attn_norm.data(), s.attn_norm.size(), "cudaMemcpy(attn norm)");
    d.ffn_norm = upload_floats(s.ffn_norm.data(), s.ffn_norm.size(), "cudaMemcpy(ffn norm)");
    d.wq = upload_matrix(s.wq, "cudaMemcpy(wq)");
    d.wk = upload_matrix(s.wk, "cudaMemcpy(wk)");
    d.wv = upload_matrix(s.wv, "cudaMemcpy(wv)");
    d.wo = upload_matrix(s.wo, "cudaMemcpy(wo)");
    d.w_gate = upload_matrix(s.w_gate, "cudaMemcpy(w_gate)");
    d.w_up = upload_matrix(s.w_up, "cudaMemcpy(w_up)");
    d.w_down = upload_matrix(s.w_down, "cudaMemcpy(w_down)");
    w.layers.push_back(std::move(d));
  }
  return w;
}

DeviceWeights DeviceWeights::random(const model::LlamaConfig& c, uint64_t seed) {
  const size_t dim = c.dim, qd = c.q_dim(), kvd = c.kv_dim(), hid = c.hidden_dim;
  DeviceWeights w;
  w.embedding.allocate(static_cast<size_t>(c.vocab_size) * dim, "cudaMalloc(embedding)");
  fill_random_float(w.embedding.get(), w.embedding.size(), seed, 1.0f, 0.0f, nullptr);
  w.final_norm = ones(dim, seed);
  w.output = random_matrix(c.vocab_size, dim, seed + 1);
  uint64_t s = seed + 2;
  for (int l = 0; l < c.n_layers; ++l) {
    DeviceLayer d;
    d.attn_norm = ones(dim, s);
    d.ffn_norm = ones(dim, s);
    d.wq = random_matrix(qd, dim, s++);
    d.wk = random_matrix(kvd, dim, s++);
    d.wv = random_matrix(kvd, dim, s++);
    d.wo = random_matrix(dim, qd, s++);
    d.w_gate = random_matrix(hid, dim, s++);
    d.w_up = random_matrix(hid, dim, s++);
    d.w_down = random_matrix(dim, hid, s++);
    w.layers.push_back(std::move(d));
  }
  check_cuda(cudaDeviceSynchronize(), "random weights");
  return w;
}

}  // namespace polarquant::cuda
