// Model runtime speed: the quantized-weight matmul (SIMD + threads vs the scalar reference) and
// SmolLM2 decode steps at a long context with each K/V codec. Ratios are to a baseline measured
// earlier in the same run: the scalar matmul, and the f16-cache decode. The decode benchmarks fill
// the cache with Gaussian K/V (the speed of a decode step does not depend on the cached values),
// so a 4k context costs seconds instead of a 4k-token prefill. They are skipped when the model is
// absent (scripts/fetch_model.sh fetches it).
#include <benchmark/benchmark.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "model/generation.h"
#include "model/ggml_types.h"
#include "model/llama_model.h"
#include "model/matmul.h"
#include "model/transformer.h"

namespace polarquant::model {
namespace {

std::map<std::string, double>& baselines() {
  static std::map<std::string, double> m;
  return m;
}

std::vector<float> gaussian(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g;
  std::vector<float> v(n);
  for (auto& x : v) x = g(rng);
  return v;
}

// Wall seconds per iteration of the state's loop, measured around it.
class LoopTimer {
 public:
  LoopTimer() : t0_(std::chrono::steady_clock::now()) {}
  double per_iteration(const benchmark::State& state) const {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    return state.iterations() > 0 ? s / static_cast<double>(state.iterations()) : 0.0;
  }

 private:
  std::chrono::steady_clock::time_point t0_;
};

// Records the baseline's time under key, or reports this run's speed-up over it.
void report_ratio(benchmark::State& state, const std::string& key, bool is_baseline,
                  double seconds) {
  if (is_baseline) {
    baselines()[key] = seconds;
  } else if (baselines().count(key) != 0 && seconds > 0.0) {
    state.counters["speedup_vs_baseline"] = baselines()[key] / seconds;
  }
}

// args: type id, rows, cols, tokens, reference (1) or fast (0), threads
void BM_Matmul(benchmark::State& state) {
  const auto type = static_cast<GgmlType>(state.range(0));
  const int64_t rows = state.range(1), cols = state.range(2);
  const size_t tokens = static_cast<size_t>(state.range(3));
  const bool reference = state.range(4) != 0;
  const int threads = static_cast<int>(state.range(5));
  const auto wf = gaussian(static_cast<size_t>(rows * cols), 1);
  const size_t rb = row_bytes(type, cols);
  std::vector<uint8_t> q(rb * static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r)
    quantize_row_ref(type, wf.data() + r * cols, q.data() + r * rb, cols);
  const WeightMatrix w = make_weight_matrix(type, q.data(), rows, cols);
  const auto x = gaussian(tokens * static_cast<size_t>(cols), 2);
  std::vector<float> y(tokens * static_cast<size_t>(rows));
  LoopTimer timer;
  for (auto _ : state) {
    if (reference) {
      matmul_ref(w, x.data(), tokens, y.data());
    } else {
      matmul(w, x.data(), tokens, y.data(), threads);
    }
    benchmark::DoNotOptimize(y.data());
  }
  const double seconds = timer.per_iteration(state);
  const std::string name = type_name(static_cast<uint32_t>(type));
  report_ratio(state,
               "matmul/" + name + "/" + std::to_string(rows) + "/" + std::to_string(cols) + "/" +
                   std::to_string(tokens),
               reference, seconds);
  state.counters["GMAC/s"] =
      static_cast<double>(rows * cols) * static_cast<double>(tokens) / seconds / 1e9;
  state.SetLabel(name + " " + std::to_string(rows) + "x" + std::to_string(cols) + " weights x " +
                 std::to_string(tokens) + " tokens, " +
                 (reference ? std::string("scalar reference (baseline)")
                            : "simd, threads " + std::to_string(threads)));
}

const std::string& model_path() {
  static const std::string p = default_model_path();
  return p;
}

// args: context tokens, threads; the codec comes from the registration. f16 is the baseline and
// must be registered first.
void BM_Decode(benchmark::State& state, const std::string& codec) {
  if (!std::filesystem::exists(model_path())) {
    state.SkipWithError("SmolLM2 GGUF absent: run scripts/fetch_model.sh");
    return;
  }
  static const LlamaModel model = LlamaModel::load(model_path());
  const LlamaConfig& c = model.config();
  const size_t ctx = static_cast<size_t>(state.range(0));
  RuntimeOptions rt;
  rt.key_codec = rt.value_codec = codec;
  rt.n_threads = static_cast<int>(state.range(1));
  Transformer tf(model, rt);
  const SequenceId seq = tf.add_sequence();
  const auto kv = gaussian(ctx * static_cast<size_t>(c.kv_dim()), 3);
  for (int l = 0; l < c.n_layers; ++l) tf.cache().append(seq, l, kv.data(), kv.data(), ctx);
  std::vector<float> logits;
  int token = 1000;
  LoopTimer timer;
  for (auto _ : state) {
    tf.forward(seq, &token, 1, logits, false);
    token = 1000 + static_cast<int>(tf.position(seq) % 1000);
  }
  const double seconds = timer.per_iteration(state);
  report_ratio(state, "decode/" + std::to_string(ctx) + "/" + std::to_string(rt.n_threads),
               codec == "f16", seconds);
  state.counters["tok/s"] = 1.0 / seconds;
  state.counters["kv_MB"] = static_cast<double>(tf.cache().memory().total_bytes) / 1e6;
  state.SetLabel("SmolLM2-135M, " + codec + " K/V cache, context " + std::to_string(ctx) +
                 ", threads " + std::to_string(rt.n_threads) +
                 (codec == "f16" ? " (baseline)" : ""));
}

void register_all() {
  for (int type : {3, 8, 0}) {  // Q4_1, Q8_0, F32: SmolLM2's weight types
    for (int tokens : {1, 64}) {
      benchmark::RegisterBenchmark("matmul/reference", BM_Matmul)
          ->Args({type, 576, 1536, tokens, 1, 1});
      for (int threads : {1, 2}) {
        benchmark::RegisterBenchmark("matmul/simd", BM_Matmul)
            ->Args({type, 576, 1536, tokens, 0, threads});
      }
    }
  }
  for (const char* codec : {"f16", "paper", "polar37", "q4_0"}) {
    benchmark::RegisterBenchmark((std::string("decode/") + codec).c_str(),
                                 [codec](benchmark::State& s) { BM_Decode(s, codec); })
        ->Args({4096, 1})
        ->Iterations(12)
        ->Unit(benchmark::kMillisecond);
  }
}

const int registered = (register_all(), 0);

}  // namespace
}  // namespace polarquant::model
