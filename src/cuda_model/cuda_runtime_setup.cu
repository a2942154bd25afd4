// CudaTransformer's construction: options checked, the memory plan checked against the GPU's
// free memory before anything large is allocated, weights uploaded, buffers sized once.
#include <polarquant/error.h>

#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "cuda_model/runtime_impl.h"

namespace polarquant::cuda {

namespace {

constexpr size_t kReserveBytes = size_t{512} << 20;  // CUDA context, cuBLAS workspace, slack
constexpr int kPageTokens = 32;
constexpr int kMaxWindow =
    8192;  // window_decode_merge keeps a score per window row in shared memory

std::string gib(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(bytes) / (1u << 30));
  return buf;
}

size_t resolved_context(const model::LlamaConfig& c, const model::RuntimeOptions& o) {
  return o.max_context == 0 ? static_cast<size_t>(c.context_length) : o.max_context;
}

int resolved_rows(const model::RuntimeOptions& o) {
  return std::max(o.prefill_chunk, o.max_sequences);
}

void check_options(const model::LlamaConfig& c, const model::RuntimeOptions& o) {
  if (o.sink_tokens < 0 || o.recent_tokens < 0 ||
      static_cast<long>(o.sink_tokens) + o.recent_tokens > kMaxWindow) {
    throw_invalid("the GPU cache keeps at most " + std::to_string(kMaxWindow) +
                  " full-precision tokens per sequence (sink + recent); got --sink " +
                  std::to_string(o.sink_tokens) + " and --recent " +
                  std::to_string(o.recent_tokens));
  }
  if (!o.quantize_generated) {
    throw Error(ErrorKind::kUnsupported,
                "the CUDA runtime quantizes generated tokens (no --fp16-generated): it keeps a "
                "bounded full-precision window (--recent); use --device cpu for that setting");
  }
  if (!o.key_codebooks.empty() || !o.value_codebooks.empty()) {
    throw Error(ErrorKind::kUnsupported,
                "the CUDA runtime uses the analytic codebooks (no --key-codebooks / "
                "--value-codebooks): use --device cpu for codebook files");
  }
  if (o.online_codebooks) {
    throw Error(ErrorKind::kUnsupported,
                "the CUDA runtime uses the analytic codebooks (no --codebooks online): its kernels "
                "take one codebook per cache, not one per sequence and layer; use --device cpu "
                "for online codebooks");
  }
  if (o.max_sequences < 1) throw_invalid("max_sequences must be >= 1");
  if (o.prefill_chunk <= 0) throw_invalid("prefill_chunk must be positive");
  if (o.max_context > static_cast<size_t>(c.context_length)) {
    throw_invalid("max_context " + std::to_string(o.max_context) +
                  " exceeds the model's context of " + std::to_string(c.context_length));
  }
  if (c.head_dim % 2 != 0) throw_invalid("head_dim must be even for RoPE");
}

}  // namespace

size_t MemoryPlan::max_tokens() const {
  const size_t fixed = weight_bytes + scratch_bytes;
  if (free_bytes <= fixed || kv_bytes_per_token == 0) return 0;
  return (free_bytes - fixed) / kv_bytes_per_token;
}

MemoryPlan plan_memory(const model::LlamaConfig& c, const model::RuntimeOptions& o) {
  check_options(c, o);
  std::string why;
  if (!device_available(&why)) throw_state("the CUDA runtime needs a GPU: " + why);
  MemoryPlan p;
  size_t free = 0, total = 0;
  check_cuda(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
  p.free_bytes = o.gpu_memory_limit > 0 ? std::min(free, o.gpu_memory_limit) : free;
  p.weight_bytes = DeviceWeights::bytes_for(c);
  const size_t rows = static_cast<size_t>(resolved_rows(o));
  const size_t ctx = resolved_context(c, o);
  const size_t dim = c.dim, qd = c.q_dim(), kvd = c.kv_dim(), hid = c.hidden_dim;
  const size_t activations =
      rows * ((dim + 2 * qd + 2 * kvd + 2 * hid + c.vocab_size) * 4 + (dim + qd + hid) * 2);
  const size_t decode_ws =
      static_cast<size_t>(o.max_sequences) * c.n_heads * 1024 * (c.head_dim + 2) * sizeof(float);
  const size_t pages = (ctx + kPageTokens - 1) / kPageTokens;
  const size_t stage = (5 * rows + 3 * static_cast<size_t>(o.max_sequences) + rows +
                        static_cast<size_t>(o.max_sequences) * pages + 64) *
                       sizeof(int32_t);
  const size_t seqs = static_cast<size_t>(o.max_sequences);
  // Dense attention's per-layer keys and values (prefill), the dequantize scratch, the key means,
  // the codes' log-sum-exps; with --rope-center the means before RoPE, the shifted keys of a step
  // and decode's per-page score shifts.
  const size_t rope_center =
      o.rope_center_keys && o.center_keys
          ? (seqs * c.n_layers * kvd + rows * kvd + seqs * pages * c.n_heads) * sizeof(float)
          : 0;
  p.scratch_bytes = activations +
                    DenseAttention::bytes_for(c.n_heads, c.head_dim, static_cast<int>(rows), ctx) +
                    2 * c.n_layers * kvd * ctx * sizeof(__half) + kvd * ctx * sizeof(float) +
                    decode_ws + seqs * c.n_layers * kvd * sizeof(float) +
                    seqs * c.n_heads * sizeof(float) + 2 * stage + rope_center + kReserveBytes;
  p.kv_bytes_per_token =
      kv_bytes_per_token(c, o.key_codec, o.value_codec, kPageTokens, o.codec_seed);
  // The pool (one spare page per layer) and the full-precision windows.
  const size_t window_bytes = 2 * seqs * c.n_layers *
                              static_cast<size_t>(o.sink_tokens + o.recent_tokens) * kvd *
                              sizeof(__half);
  p.kv_bytes = p.kv_bytes_per_token * kPageTokens * (pages * seqs + 1) + window_bytes;
  return p;
}

CudaTransformer::Impl::Impl(const model::LlamaConfig& c, const model::RuntimeOptions& o)
    : config(c), options(o) {
  plan = plan_memory(c, o);  // checks the options and the device first
  if (plan.required_bytes() > plan.free_bytes) {
    model::RuntimeOptions f16 = o, paper = o;
    f16.key_codec = f16.value_codec = "f16";
    paper.key_codec = paper.value_codec = "paper";
    const size_t fixed = plan.weight_bytes + plan.scratch_bytes;
    auto fits = [&](const model::RuntimeOptions& r) {
      const size_t per =
          kv_bytes_per_token(c, r.key_codec, r.value_codec, kPageTokens, r.codec_seed);
      return plan.free_bytes > fixed ? (plan.free_bytes - fixed) / per : 0;
    };
    throw_invalid("the request does not fit in GPU memory: weights " + gib(plan.weight_bytes) +
                  " + scratch " + gib(plan.scratch_bytes) + " + KV cache " + gib(plan.kv_bytes) +
                  " (" + std::to_string(o.max_sequences) + " sequences x " +
                  std::to_string(resolved_context(c, o)) + " tokens, -ctk " + o.key_codec +
                  " -ctv " + o.value_codec + ") = " + gib(plan.required_bytes()) +
                  ", but the GPU has " + gib(plan.free_bytes) +
                  (o.gpu_memory_limit > 0 ? " for this run (--gpu-memory)" : " free") +
                  ". Tokens (sequences x context) that fit: " + std::to_string(plan.max_tokens()) +
                  " with this cache, " + std::to_string(fits(f16)) + " with f16, " +
                  std::to_string(fits(paper)) + " with paper");
  }
  cudaDeviceProp prop{};
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  gpu_name = prop.name;
  multiprocessors = prop.multiProcessorCount;
  max_context = resolved_context(c, o);
  max_rows = resolved_rows(o);
  page_tokens = kPageTokens;
  max_pages = static_cast<int>((max_context + page_tokens - 1) / page_tokens);
  total_pages = max_pages * o.max_sequences;
  spare_page = total_pages;
  window = WindowLayout{o.sink_tokens, o.recent_tokens, c.n_layers, c.n_kv_heads, c.head_dim};
  kcodec = std::make_unique<DeviceKvCodec>(o.key_codec, c.head_dim, c.n_kv_heads, page_tokens,
                                           o.codec_seed, true);
  vcodec = std::make_unique<DeviceKvCodec>(o.value_codec, c.head_dim, c.n_kv_heads, page_tokens,
                                           o.codec_seed, true);
  decode_name = "dequantize+cublas";
  if (kcodec->is_f16() && vcodec->is_f16() &&
      (c.head_dim == 64 || c.head_dim == 128 || c.head_dim == 256)) {
    decode_kind = DecodeKind::kF16;
    decode_name = "f16-split-kv";
  } else if (!kcodec->is_f16() && !vcodec->is_f16()) {
    try {  // one codec object for K and V where their names agree (the fragment kernels want it)
      decode_name = decode_kernel_name(*kcodec->polar(), *decode_values()->polar(), c.n_heads);
      decode_kind = DecodeKind::kPolar;
    } catch (const Error&) {
      decode_name = "dequantize+cublas";  // more query heads per KV head than the kernels take
    }
  }
}

void CudaTransformer::Impl::allocate() {
  const model::LlamaConfig& c = config;
  const size_t rows = static_cast<size_t>(max_rows);
  const size_t dim = c.dim, qd = c.q_dim(), kvd = c.kv_dim(), hid = c.hidden_dim;
  check_cublas(cublasCreate(&cublas), "cublasCreate");
  check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  std::vector<float> freq(c.head_dim / 2);
  for (int i = 0; i < c.head_dim / 2; ++i)
    freq[i] =
        static_cast<float>(std::pow(static_cast<double>(c.rope_theta), -2.0 * i / c.head_dim));
  inv_freq.allocate(freq.size(), "cudaMalloc(rope)");
  check_cuda(
      cudaMemcpy(inv_freq.get(), freq.data(), freq.size() * sizeof(float), cudaMemcpyHostToDevice),
      "cudaMemcpy(rope)");
  k_pool.allocate(c.n_layers * layer_pool_bytes(*kcodec), "cudaMalloc(K pages)");
  v_pool.allocate(c.n_layers * layer_pool_bytes(*vcodec), "cudaMalloc(V pages)");
  if (!window.empty()) {
    win_k.allocate(options.max_sequences * window.slot_halves(), "cudaMalloc(K window)");
    win_v.allocate(options.max_sequences * window.slot_halves(), "cudaMalloc(V window)");
  }
  lse.allocate(static_cast<size_t>(options.max_sequences) * c.n_heads, "cudaMalloc(lse)");
  for (int p = total_pages - 1; p >= 0; --p) free_pages.push_back(p);
  for (int s = options.max_sequences - 1; s >= 0; --s) free_slots.push_back(s);
  means.allocate(static_cast<size_t>(options.max_sequences) * c.n_layers * kvd,
                 "cudaMalloc(means)");
  // RoPE-aware key centering shifts lossy keys only: an f16 key cache is exact without it.
  if (options.rope_center_keys && options.center_keys && !kcodec->is_f16()) {
    rope_shift = RopeShift(freq, c.head_dim, c.n_kv_heads, page_tokens, window.sink, max_pages);
    means_pre.allocate(means.size(), "cudaMalloc(means before RoPE)");
    k_code.allocate(rows * kvd, "cudaMalloc(shifted keys)");
    if (decode_kind != DecodeKind::kDense) {
      page_bias.allocate(static_cast<size_t>(options.max_sequences) * max_pages * c.n_heads,
                         "cudaMalloc(page score shifts)");
    }
  }
  x.allocate(rows * dim);
  q.allocate(rows * qd);
  k.allocate(rows * kvd);
  v.allocate(rows * kvd);
  att.allocate(rows * qd);
  gate.allocate(rows * hid);
  up.allocate(rows * hid);
  logits.allocate(rows * c.vocab_size, "cudaMalloc(logits)");
  xn.allocate(rows * dim);
  att_half.allocate(rows * qd);
  hidden.allocate(rows * hid);
  dense =
      std::make_unique<DenseAttention>(c.n_heads, c.n_kv_heads, c.head_dim, max_rows, max_context);
  dense_k.allocate(c.n_layers * kvd * max_context, "cudaMalloc(dense attention keys)");
  dense_v.allocate(c.n_layers * kvd * max_context, "cudaMalloc(dense attention values)");
  dense_rows.assign(c.n_layers, DenseRows{});
  dequant.allocate(kvd * max_context, "cudaMalloc(dequantize scratch)");
  const size_t stage = 5 * rows + 3 * static_cast<size_t>(options.max_sequences) + rows +
                       static_cast<size_t>(options.max_sequences) * max_pages + 64;
  dev_stage.allocate(stage, "cudaMalloc(step inputs)");
  size_t ws = 0;
  for (int b = 1; b <= options.max_sequences && decode_kind != DecodeKind::kDense; ++b) {
    DecodeBatch batch;  // the pointers only need to be device memory for the size query
    batch.k_pool = k_pool.get();
    batch.v_pool = v_pool.get();
    batch.page_tables = dev_stage.get();
    batch.lengths = dev_stage.get();
    batch.max_pages = max_pages;
    batch.batch = b;
    batch.max_length = static_cast<int>(max_context);
    batch.n_q_heads = c.n_heads;
    ws = std::max(ws,
                  decode_kind == DecodeKind::kF16
                      ? f16_decode_workspace_bytes(kcodec->f16(), batch, multiprocessors)
                      : decode_workspace_bytes(*kcodec->polar(), *decode_values()->polar(), batch));
  }
  decode_ws.allocate(ws, "cudaMalloc(decode workspace)");
  next_tokens.allocate(rows);
  void* pinned = nullptr;
  check_cuda(cudaHostAlloc(&pinned, stage * sizeof(int32_t), cudaHostAllocDefault),
             "cudaHostAlloc(step inputs)");
  host_stage = static_cast<int32_t*>(pinned);
  check_cuda(cudaEventCreateWithFlags(&stage_copied, cudaEventDisableTiming),
             "cudaEventCreate(step inputs copied)");
}

CudaTransformer::Impl::~Impl() {
  if (stream != nullptr) cudaStreamSynchronize(stream);
  if (stage_copied != nullptr) cudaEventDestroy(stage_copied);
  if (host_stage != nullptr) cudaFreeHost(host_stage);
  if (cublas != nullptr) cublasDestroy(cublas);
  if (stream != nullptr) cudaStreamDestroy(stream);
}

CudaTransformer::CudaTransformer(const model::LlamaModel& model,
                                 const model::RuntimeOptions& options)
    : impl_(std::make_unique<Impl>(model.config(), options)) {
  impl_->weights = DeviceWeights::upload(model);
  impl_->allocate();
}

CudaTransformer::CudaTransformer(const model::LlamaConfig& config, uint64_t weight_seed,
                                 const model::RuntimeOptions& options)
    : impl_(std::make_unique<Impl>(config, options)) {
  impl_->weights = DeviceWeights::random(config, weight_seed);
  impl_->allocate();
}

CudaTransformer::~CudaTransformer() = default;

const model::LlamaConfig& CudaTransformer::config() const {
  return impl_->config;
}
const model::RuntimeOptions& CudaTransformer::options() const {
  return impl_->options;
}
std::string CudaTransformer::device_name() const {
  return "cuda (" + impl_->gpu_name + ")";
}
std::string CudaTransformer::decode_path() const {
  return impl_->decode_name;
}
const MemoryPlan& CudaTransformer::plan() const {
  return impl_->plan;
}
void CudaTransformer::synchronize() const {
  check_cuda(cudaStreamSynchronize(impl_->stream), "cudaStreamSynchronize");
}

namespace {
std::unique_ptr<model::Runtime> make_cuda(const model::LlamaModel& model,
                                          const model::RuntimeOptions& options) {
  return std::make_unique<CudaTransformer>(model, options);
}
}  // namespace

void register_cuda_runtime() {
  model::register_runtime("cuda", &make_cuda);
}

}  // namespace polarquant::cuda
