// GPU benchmark of the PolarQuant kernels (run by bench/cuda/run.sh, which puts PyTorch SDPA on
// fp16 K/V beside it): decode attention at the Llama-3.1-8B shape (8 KV heads; 32 query heads
// unless --q-heads; head_dim 128 unless --dim gives 64 or 256; the `paper` preset unless
// --preset names another, or a key/value pair such as `polar4kv` or `polar41/paper`; `--preset
// f16` times the runtime's fp16-page kernel, the baseline the serving benchmark compares against;
// 32-token pages; the codec's fastest page layout (the pairs layout for `paper` and `polar37`)
// unless `--layout host` asks for the CPU cache's) for batch 1/8/32 and context 4k..128k
// (--batch and --context pick one), and the encode throughput of a 16k-token prefill. Prints one
// JSON object per line.
//
// Timing: CUDA events around each call, median of the repetitions; the pages are replicated
// into enough copies (>= 256 MiB in all, over 4x the 60 MB L2) and the calls cycle through them,
// so every call reads its K and V from HBM.
#include <polarquant/codec_pair.h>
#include <polarquant/cuda.h>
#include <polarquant/error.h>
#include <polarquant/polar_codec.h>

#include "cuda_model/f16_kv.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

namespace {

using namespace polarquant;

void ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

// Roughly Gaussian values (sum of four uniforms), fast enough for 10^8 numbers.
std::vector<float> noise(size_t n, uint64_t seed) {
  std::vector<float> v(n);
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& x : v) {
    float sum = 0.0f;
    for (int k = 0; k < 4; ++k) {
      s ^= s << 13;
      s ^= s >> 7;
      s ^= s << 17;
      sum += static_cast<float>(s >> 40) * (1.0f / 16777216.0f);
    }
    x = (sum - 2.0f) * 1.7320508f;
  }
  return v;
}

float median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <class F>
std::vector<float> time_calls(int reps, F&& call) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < 3; ++i) call(i);
  std::vector<float> ms;
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(a);
    call(i);
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float t = 0.0f;
    cudaEventElapsedTime(&t, a, b);
    ms.push_back(t);
  }
  ok(cudaGetLastError(), "timed calls");
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::string preset = "paper";
  std::string layout_name = "fastest";
  int only_batch = 0, only_context = 0;  // 0: every shape
  int dim = 128, n_q = 32;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") {
      quick = true;
    } else if (arg == "--preset" && i + 1 < argc) {
      preset = argv[++i];
    } else if (arg == "--batch" && i + 1 < argc) {
      only_batch = std::atoi(argv[++i]);
    } else if (arg == "--context" && i + 1 < argc) {
      only_context = std::atoi(argv[++i]);
    } else if (arg == "--dim" && i + 1 < argc) {
      dim = std::atoi(argv[++i]);
    } else if (arg == "--q-heads" && i + 1 < argc) {
      n_q = std::atoi(argv[++i]);
    } else if (arg == "--layout" && i + 1 < argc &&
               (std::string(argv[i + 1]) == "host" || std::string(argv[i + 1]) == "pairs" ||
                std::string(argv[i + 1]) == "fastest")) {
      layout_name = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: %s [--quick] [--preset NAME] [--batch N] [--context N] [--dim "
                   "64|128|256] [--q-heads N] [--layout host|pairs|fastest]\n",
                   argv[0]);
      return 2;
    }
  }
  const int n_kv = 8, T = 32;
  if (dim != 64 && dim != 128 && dim != 256) {
    std::fprintf(stderr, "--dim %d: the kernels take head_dim 64, 128 or 256\n", dim);
    return 2;
  }
  if (n_q < n_kv || n_q > 16 * n_kv || n_q % n_kv != 0) {
    std::fprintf(stderr, "--q-heads %d: give a multiple of %d from %d to %d (1..16 per KV head)\n",
                 n_q, n_kv, n_kv, 16 * n_kv);
    return 2;
  }
  if (only_batch < 0 || only_context < 0) {
    std::fprintf(stderr, "--batch and --context must be positive (or absent: every shape)\n");
    return 2;
  }
  CodecPair names;
  try {
    names = codec_pair(preset);
  } catch (const Error& e) {
    std::fprintf(stderr, "--preset %s: %s\n", preset.c_str(), e.what());
    return 2;
  }
  const bool f16 = names.key == "f16" && names.value == "f16";
  if (!f16 && (names.key == "f16" || names.value == "f16")) {
    std::fprintf(stderr, "--preset %s: keys and values must both be f16 or both PolarQuant\n",
                 preset.c_str());
    return 2;
  }
  const cuda::F16Layout f16_layout{dim, n_kv, T};
  std::unique_ptr<PolarCodec> codec_ptr, value_ptr;
  try {
    codec_ptr = std::make_unique<PolarCodec>(polar_preset(f16 ? "paper" : names.key, dim));
    if (names.value != names.key) {
      value_ptr = std::make_unique<PolarCodec>(polar_preset(names.value, dim));
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "--preset %s, head_dim %d: %s\n", preset.c_str(), dim, e.what());
    return 2;
  }
  std::string why;
  if (!cuda::device_available(&why)) {
    std::fprintf(stderr, "no CUDA device: %s\n", why.c_str());
    return 2;
  }
  std::unique_ptr<cuda::CudaPolarCodec> gpu_ptr, gpu_value_ptr;
  try {
    // fastest: the pairs layout where the codec has it; pairs: required (kUnsupported otherwise).
    const auto layout = [&](const PolarCodec& c) {
      return layout_name == "host"    ? cuda::PageLayout::kHost
             : layout_name == "pairs" ? cuda::PageLayout::kPairs
                                      : cuda::fastest_page_layout(c.config(), T);
    };
    gpu_ptr = std::make_unique<cuda::CudaPolarCodec>(*codec_ptr, T, n_kv, layout(*codec_ptr));
    if (value_ptr) {
      gpu_value_ptr =
          std::make_unique<cuda::CudaPolarCodec>(*value_ptr, T, n_kv, layout(*value_ptr));
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "--preset %s, head_dim %d on the GPU: %s\n", preset.c_str(), dim,
                 e.what());
    return 2;
  }
  // gpu codes the keys (and the encode timing), gpu_v the values: the same codec unless a pair.
  cuda::CudaPolarCodec& gpu = *gpu_ptr;
  const cuda::CudaPolarCodec& gpu_v = gpu_value_ptr ? *gpu_value_ptr : gpu;
  const size_t k_page_bytes = f16 ? f16_layout.page_bytes() : gpu.page_bytes();
  const size_t v_page_bytes = f16 ? f16_layout.page_bytes() : gpu_v.page_bytes();
  const double payload_bits =
      f16 ? 16.0 * dim
          : 0.5 * (codec_ptr->config().payload_bits() +
                   (value_ptr ? *value_ptr : *codec_ptr).config().payload_bits());
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  std::printf(
      "{\"kind\":\"device\",\"name\":\"%s\",\"sms\":%d,\"driver_api\":%d,\"runtime\":%d,"
      "\"preset\":\"%s\",\"head_dim\":%d,\"q_heads\":%d,\"kernel\":\"%s\","
      "\"layout\":\"%s\"}\n",
      prop.name, prop.multiProcessorCount, driver, runtime, preset.c_str(), dim, n_q,
      f16 ? "f16-split-kv" : cuda::decode_kernel_name(gpu, gpu_v, n_q),
      gpu.layout() == cuda::PageLayout::kPairs ? "pairs" : "host");

  const std::vector<int> contexts =
      quick ? std::vector<int>{4096, 131072} : std::vector<int>{4096, 16384, 65536, 131072};
  const std::vector<int> batches = {1, 8, 32};
  const int max_ctx = contexts.back();
  const size_t row = static_cast<size_t>(n_kv) * dim;
  const size_t shift = 4096;  // V reads the same noise 4096 tokens further on
  const std::vector<float> host = noise((max_ctx + shift) * row, 1);
  float* x = nullptr;
  ok(cudaMalloc(&x, host.size() * sizeof(float)), "malloc x");
  ok(cudaMemcpy(x, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice), "copy x");

  // Encode throughput: a 16k-token prompt's K (8 heads) into fresh pages, with and without the
  // rotation (S folded into the projection weights skips it).
  if (!f16) {
    const int n = 16384, pages = n / T;
    uint8_t* pool = nullptr;
    int32_t* table = nullptr;
    ok(cudaMalloc(&pool, pages * gpu.page_bytes()), "malloc pool");
    ok(cudaMalloc(&table, pages * sizeof(int32_t)), "malloc table");
    std::vector<int32_t> ids(pages);
    for (int i = 0; i < pages; ++i) ids[i] = i;
    cudaMemcpy(table, ids.data(), pages * sizeof(int32_t), cudaMemcpyHostToDevice);
    for (bool rotated : {false, true}) {
      const auto ms = time_calls(20, [&](int) {
        cuda::encode_prefill(gpu, {pool, table}, 0, n, x, rotated, nullptr);
      });
      const double vectors = static_cast<double>(n) * n_kv;
      std::printf(
          "{\"kind\":\"encode\",\"tokens\":%d,\"kv_heads\":%d,\"rotated_input\":%s,"
          "\"ms\":%.5f,\"vectors_per_s\":%.4g}\n",
          n, n_kv, rotated ? "true" : "false", median(ms), vectors / (median(ms) * 1e-3));
    }
    cudaFree(pool);
    cudaFree(table);
  }

  for (int ctx : contexts) {
    for (int batch : batches) {
      if ((only_batch && batch != only_batch) || (only_context && ctx != only_context)) continue;
      const size_t pages = static_cast<size_t>(ctx) / T;
      const size_t set_bytes = batch * pages * (k_page_bytes + v_page_bytes);
      const int copies = static_cast<int>(std::max<size_t>(1, (256u << 20) / set_bytes + 1));
      const size_t total_pages = copies * batch * pages;
      uint8_t *kp = nullptr, *vp = nullptr;
      int32_t *tables = nullptr, *lengths = nullptr;
      float *q = nullptr, *out = nullptr;
      ok(cudaMalloc(&kp, total_pages * k_page_bytes), "malloc k pages");
      ok(cudaMalloc(&vp, total_pages * v_page_bytes), "malloc v pages");
      cudaMemset(kp, 0, total_pages * k_page_bytes);
      cudaMemset(vp, 0, total_pages * v_page_bytes);
      std::vector<int32_t> ids(total_pages);
      for (size_t i = 0; i < total_pages; ++i) ids[i] = static_cast<int32_t>(i);
      ok(cudaMalloc(&tables, total_pages * sizeof(int32_t)), "malloc tables");
      cudaMemcpy(tables, ids.data(), total_pages * sizeof(int32_t), cudaMemcpyHostToDevice);
      for (int b = 0; b < batch; ++b) {
        const int32_t* t = tables + b * pages;
        if (f16) {
          cuda::f16_store(f16_layout, kp, t, static_cast<int>(pages), nullptr, false, 0, ctx, x,
                          nullptr);
          cuda::f16_store(f16_layout, vp, t, static_cast<int>(pages), nullptr, false, 0, ctx,
                          x + shift * row, nullptr);
        } else {
          cuda::encode_prefill(gpu, {kp, t}, 0, ctx, x, false, nullptr);
          cuda::encode_prefill(gpu_v, {vp, t}, 0, ctx, x + shift * row, false, nullptr);
        }
      }
      const size_t k_one = batch * pages * k_page_bytes, v_one = batch * pages * v_page_bytes;
      for (int c = 1; c < copies; ++c) {
        cudaMemcpy(kp + c * k_one, kp, k_one, cudaMemcpyDeviceToDevice);
        cudaMemcpy(vp + c * v_one, vp, v_one, cudaMemcpyDeviceToDevice);
      }
      std::vector<int32_t> lens(batch, ctx);
      ok(cudaMalloc(&lengths, batch * sizeof(int32_t)), "malloc lengths");
      cudaMemcpy(lengths, lens.data(), batch * sizeof(int32_t), cudaMemcpyHostToDevice);
      ok(cudaMalloc(&q, batch * n_q * dim * sizeof(float)), "malloc q");
      ok(cudaMalloc(&out, batch * n_q * dim * sizeof(float)), "malloc out");
      cudaMemcpy(q, x, batch * n_q * dim * sizeof(float), cudaMemcpyDeviceToDevice);
      cuda::DecodeBatch db;
      db.k_pool = kp;
      db.v_pool = vp;
      db.max_pages = static_cast<int>(pages);
      db.lengths = lengths;
      db.batch = batch;
      db.max_length = ctx;
      db.n_q_heads = n_q;
      db.page_tables = tables;
      const size_t ws_bytes =
          f16 ? cuda::f16_decode_workspace_bytes(f16_layout, db, prop.multiProcessorCount)
              : cuda::decode_workspace_bytes(gpu, gpu_v, db);
      void* ws = nullptr;
      ok(cudaMalloc(&ws, ws_bytes), "malloc workspace");
      auto decode = [&] {
        if (f16) {
          cuda::f16_decode_attention(f16_layout, db, q, out, ws, ws_bytes, prop.multiProcessorCount,
                                     nullptr);
        } else {
          cuda::decode_attention(gpu, gpu_v, db, q, out, ws, ws_bytes, nullptr);
        }
      };
      const auto ms = time_calls(quick ? 10 : 40, [&](int i) {
        db.page_tables = tables + static_cast<size_t>(i % copies) * batch * pages;
        decode();
      });
      ok(cudaDeviceSynchronize(), "decode");
      // Host time of the call (three enqueued launches, no synchronisation): what a caller that
      // does not use CUDA graphs pays per layer on the CPU.
      constexpr int kHostCalls = 100;
      const auto h0 = std::chrono::steady_clock::now();
      for (int i = 0; i < kHostCalls; ++i) decode();
      const double host_us =
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - h0).count() /
          kHostCalls;
      ok(cudaDeviceSynchronize(), "decode");
      const double bytes = static_cast<double>(set_bytes);
      const double payload = 2.0 * batch * ctx * n_kv * (payload_bits / 8.0);
      std::printf(
          "{\"kind\":\"decode\",\"batch\":%d,\"context\":%d,\"ms\":%.5f,\"page_bytes\":%.0f,"
          "\"payload_bytes\":%.0f,\"gbps_pages\":%.1f,\"copies\":%d,\"host_us\":%.2f}\n",
          batch, ctx, median(ms), bytes, payload, bytes / (median(ms) * 1e6), copies, host_us);
      std::fflush(stdout);
      cudaFree(kp);
      cudaFree(vp);
      cudaFree(tables);
      cudaFree(lengths);
      cudaFree(q);
      cudaFree(out);
      cudaFree(ws);
    }
  }
  cudaFree(x);
  return 0;
}
