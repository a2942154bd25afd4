// Decode attention, one query token over a long context: llama.cpp's CPU flash attention
// (ggml_flash_attn_ext over F16, Q8_0 and Q4_0 K/V, as `-fa -ctk T -ctv T` runs it) beside this
// project's fused decode attention over f16, `paper` and `polar37` caches. Same shapes, same random
// K/V (a 1024-token block of N(0,1) rows repeated), same query, one thread and all threads.
//
// A benchmark dependency only: built and run by bench/llamacpp/run.sh, never part of the library,
// the default build or the tests. Each round times every implementation once, in turn, so they
// share the machine's state; the table gives the median time per implementation and the median over
// rounds of the per-round ratio ggml F16 time / this time.
#include <ggml-cpu.h>
#include <ggml.h>
#include <omp.h>
#include <polarquant/attention.h>
#include <polarquant/kv_cache.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Shape {
  const char* name;
  int n_q, n_kv, dim;
};
constexpr Shape kShapes[] = {{"llama3_8b", 32, 8, 128}, {"smollm2", 9, 3, 64}};
constexpr int kContexts[] = {8192, 16384, 32768};
constexpr size_t kChunk = 1024;

std::vector<float> gaussian(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  return x;
}

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// One implementation: run() computes the attention of the query once.
struct Impl {
  std::string name;
  virtual ~Impl() = default;
  virtual void run(int threads) = 0;
};

// ggml: K and V [dim, ctx, n_kv] of one type, q [dim, 1, n_q] f32, no mask (the whole context is
// visible to the single query), scale 1/sqrt(dim).
struct Ggml : Impl {
  ggml_context* ctx = nullptr;
  ggml_cgraph* graph = nullptr;
  ggml_tensor* out = nullptr;
  Ggml(ggml_type type, const Shape& s, int context, const std::vector<float>& k_chunk,
       const std::vector<float>& v_chunk, const std::vector<float>& q) {
    name = std::string("ggml ") + ggml_type_name(type);
    const size_t rows = static_cast<size_t>(context) * s.n_kv;
    const size_t bytes = 2 * ggml_row_size(type, s.dim) * rows + q.size() * 4 + (16u << 20);
    ctx = ggml_init({bytes, nullptr, false});
    ggml_tensor* k = ggml_new_tensor_3d(ctx, type, s.dim, context, s.n_kv);
    ggml_tensor* v = ggml_new_tensor_3d(ctx, type, s.dim, context, s.n_kv);
    ggml_tensor* qt = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, s.dim, 1, s.n_q);
    fill(type, s, context, k_chunk, k);
    fill(type, s, context, v_chunk, v);
    std::copy(q.begin(), q.end(), static_cast<float*>(qt->data));
    out = ggml_flash_attn_ext(ctx, qt, k, v, nullptr, 1.0f / std::sqrt(static_cast<float>(s.dim)),
                              0.0f, 0.0f);
    graph = ggml_new_graph(ctx);
    ggml_build_forward_expand(graph, out);
  }
  ~Ggml() override {
    if (pool) ggml_threadpool_free(pool);
    ggml_free(ctx);
  }
  // Row (t, h) of the tensor = row h of token t of the repeated chunk (chunk: kChunk x n_kv x dim).
  static void fill(ggml_type type, const Shape& s, int context, const std::vector<float>& chunk,
                   ggml_tensor* t) {
    const size_t row_bytes = ggml_row_size(type, s.dim);
    std::vector<float> row(s.dim);
    for (int h = 0; h < s.n_kv; ++h) {
      for (int tok = 0; tok < context; ++tok) {
        const float* src = &chunk[((tok % kChunk) * s.n_kv + h) * s.dim];
        char* dst =
            static_cast<char*>(t->data) + (static_cast<size_t>(h) * context + tok) * row_bytes;
        if (type == GGML_TYPE_F16) {
          ggml_fp32_to_fp16_row(src, reinterpret_cast<ggml_fp16_t*>(dst), s.dim);
        } else {
          ggml_quantize_chunk(type, src, dst, 0, 1, s.dim, nullptr);
        }
      }
    }
  }
  // A plan, work buffer and thread pool per thread count, made once and kept (as llama.cpp's CPU
  // backend keeps them between decode steps), so a call times only the graph's computation.
  int plan_threads = 0;
  ggml_cplan plan{};
  std::vector<uint8_t> work;
  ggml_threadpool* pool = nullptr;
  void run(int threads) override {
    if (threads != plan_threads) {
      if (pool) ggml_threadpool_free(pool);
      ggml_threadpool_params params = ggml_threadpool_params_default(threads);
      pool = ggml_threadpool_new(&params);
      plan = ggml_graph_plan(graph, threads, pool);
      work.resize(plan.work_size);
      plan.work_data = work.data();
      plan_threads = threads;
    }
    if (ggml_graph_compute(graph, &plan) != GGML_STATUS_SUCCESS) {
      std::fprintf(stderr, "ggml_graph_compute failed\n");
      std::exit(1);
    }
  }
};

// This project: a KvCache of one layer holding the context, decode attention of one query.
struct Ours : Impl {
  std::unique_ptr<polarquant::KvCache> cache;
  polarquant::SequenceId seq = 0;
  const std::vector<float>* q = nullptr;
  std::vector<float> out;
  int n_q = 0;
  Ours(const std::string& codec, const Shape& s, int context, const std::vector<float>& k_chunk,
       const std::vector<float>& v_chunk, const std::vector<float>& query) {
    name = "ours " + codec;
    polarquant::KvCacheOptions o;
    o.n_layers = 1;
    o.n_kv_heads = s.n_kv;
    o.head_dim = s.dim;
    o.key_codec = codec;
    o.value_codec = codec;
    cache = std::make_unique<polarquant::KvCache>(o);
    seq = cache->add_sequence();
    for (int done = 0; done < context; done += kChunk) {
      cache->append(seq, 0, k_chunk.data(), v_chunk.data(), kChunk);
    }
    q = &query;
    out.resize(query.size());
    n_q = s.n_q;
  }
  void run(int threads) override {
    polarquant::AttentionOptions options;
    options.n_threads = threads;
    polarquant::cache_attention(*cache, seq, 0, q->data(), 1, n_q, out.data(), options);
  }
};

std::string cpu_model() {
  std::ifstream info("/proc/cpuinfo");
  for (std::string line; std::getline(info, line);) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

}  // namespace

int main(int argc, char** argv) {
  const int all = static_cast<int>(std::thread::hardware_concurrency());
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 15;
  std::string only_shape = argc > 2 ? argv[2] : "";
  ggml_cpu_init();
  std::printf("cpu: %s, %d hardware threads; ggml %s; our kernel set: POLARQUANT_CPU=%s\n",
              cpu_model().c_str(), all, ggml_version(),
              std::getenv("POLARQUANT_CPU") ? std::getenv("POLARQUANT_CPU") : "(fastest)");
  std::printf("%d rounds per row; ms = median; ratio = median per-round (ggml F16 time / this)\n\n",
              rounds);
  std::printf("| shape | context | threads | implementation | ms | vs ggml F16 |\n");
  std::printf("|---|---:|---:|---|---:|---:|\n");
  for (const Shape& s : kShapes) {
    if (!only_shape.empty() && only_shape != s.name) continue;
    const size_t row = static_cast<size_t>(s.n_kv) * s.dim;
    const auto k_chunk = gaussian(kChunk * row, 1), v_chunk = gaussian(kChunk * row, 2);
    const auto q = gaussian(static_cast<size_t>(s.n_q) * s.dim, 3);
    for (int context : kContexts) {
      std::vector<std::unique_ptr<Impl>> impls;
      for (ggml_type t : {GGML_TYPE_F16, GGML_TYPE_Q8_0, GGML_TYPE_Q4_0}) {
        impls.push_back(std::make_unique<Ggml>(t, s, context, k_chunk, v_chunk, q));
      }
      for (const char* codec : {"f16", "paper", "polar37"}) {
        impls.push_back(std::make_unique<Ours>(codec, s, context, k_chunk, v_chunk, q));
      }
      for (int threads : {1, all}) {
        if (threads == all && all == 1) break;
        std::vector<std::vector<double>> times(impls.size()), ratios(impls.size());
        for (auto& impl : impls) impl->run(threads);  // warm-up
        for (int r = 0; r < rounds; ++r) {
          std::vector<double> t(impls.size());
          for (size_t i = 0; i < impls.size(); ++i) {
            const double t0 = now();
            impls[i]->run(threads);
            t[i] = now() - t0;
            times[i].push_back(t[i]);
          }
          for (size_t i = 0; i < impls.size(); ++i) ratios[i].push_back(t[0] / t[i]);
        }
        for (size_t i = 0; i < impls.size(); ++i) {
          std::printf("| %s | %d | %d | %s | %.3f | %.2fx |\n", s.name, context, threads,
                      impls[i]->name.c_str(), median(times[i]) * 1e3, median(ratios[i]));
        }
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
