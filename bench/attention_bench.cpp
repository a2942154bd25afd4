// Decode attention per generated token for one layer, over f32, f16 and PolarQuant caches
// (`paper`, and `polar4kv`, the model commands' default pair: keys polar-544444, values
// polar-422222), plus the cost of encoding one token's K and V for all heads of a layer.
//
// Shapes: Llama-3-8B heads (32 q, 8 kv, d = 128) and SmolLM2 heads (9 q, 3 kv, d = 64); contexts
// 1k..32k; one thread and all hardware threads. `speedup_vs_f16`: see decode_attention.
// `decode_attention_cold/...`: the same paired measurement with the caches evicted before each call
// (the KV cache read from DRAM, as in a many-layer model's decode step).
#include <benchmark/benchmark.h>
#include <omp.h>
#include <polarquant/attention.h>
#include <polarquant/codec_pair.h>
#include <polarquant/kv_cache.h>

#include <unistd.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "attention/attention_internal.h"
#include "cache/kv_cache_impl.h"

namespace polarquant {
namespace {

struct Shape {
  const char* name;
  int n_q, n_kv, dim;
};
constexpr Shape kShapes[] = {{"llama3_8b", 32, 8, 128}, {"smollm2", 9, 3, 64}};
constexpr int kContexts[] = {1024, 4096, 16384, 32768};
const char* const kCodecs[] = {"f16", "f32", "paper", "polar4kv"};  // f16: the baseline

std::vector<float> gaussian(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  return x;
}

// One cache per (shape, codec) holding the longest context; shorter contexts are other sequences
// of the same cache, so the pages are built once.
struct Filled {
  std::unique_ptr<KvCache> cache;
  std::map<int, SequenceId> by_context;
};

Filled& filled(const Shape& shape, const std::string& codec) {
  static std::map<std::string, Filled> all;
  Filled& f = all[std::string(shape.name) + "/" + codec];
  if (f.cache) return f;
  KvCacheOptions o;
  o.n_layers = 1;
  o.n_kv_heads = shape.n_kv;
  o.head_dim = shape.dim;
  const CodecPair pair = codec_pair(codec);
  o.key_codec = pair.key;
  o.value_codec = pair.value;
  if (const char* env = std::getenv("POLARQUANT_BENCH_PAGE_TOKENS")) o.page_tokens = std::atoi(env);
  f.cache = std::make_unique<KvCache>(o);
  const size_t row = static_cast<size_t>(shape.n_kv) * shape.dim;
  const size_t chunk = 1024;
  const auto k = gaussian(chunk * row, 1), v = gaussian(chunk * row, 2);
  for (int context : kContexts) {
    const SequenceId s = f.cache->add_sequence();
    for (int done = 0; done < context; done += chunk) {
      f.cache->append(s, 0, k.data(), v.data(), chunk);
    }
    f.by_context[context] = s;
  }
  return f;
}

// Each iteration times one f16 call and then one call on this codec's cache (same shape, context,
// thread count and query), so the baseline sees the same machine state; the reported time is this
// codec's (manual timing), and `speedup_vs_f16` is the median over iterations of the per-pair
// ratio f16 time / this time. This machine is shared, so medians, not means.
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Reads a buffer of twice the last-level cache (at least 256 MiB) one load per line, so that the
// KV cache the next call reads comes from DRAM, as a layer's cache does in a real decode step (the
// other layers' K/V and the weights have streamed through the caches since that layer last ran).
// Untimed; the buffer is allocated and touched on the first call.
void evict_caches() {
  static const std::vector<uint64_t> buffer = [] {
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    const size_t bytes = std::max<size_t>(l3 > 0 ? 2 * static_cast<size_t>(l3) : 0, 256u << 20);
    return std::vector<uint64_t>(bytes / sizeof(uint64_t), 1);
  }();
  uint64_t sum = 0;
  for (size_t i = 0; i < buffer.size(); i += 64 / sizeof(uint64_t)) sum += buffer[i];
  benchmark::DoNotOptimize(sum);
}

void decode_attention(benchmark::State& state, Shape shape, std::string codec, int context,
                      int threads, bool cold) {
  Filled& f = filled(shape, codec);
  Filled& base = filled(shape, "f16");
  const SequenceId s = f.by_context.at(context);
  const SequenceId sb = base.by_context.at(context);
  const auto q = gaussian(static_cast<size_t>(shape.n_q) * shape.dim, 3);
  std::vector<float> out(q.size());
  AttentionOptions options;
  options.n_threads = threads;
  std::vector<double> times, base_times, ratios;
  for (auto _ : state) {
    if (cold) evict_caches();
    const double t0 = omp_get_wtime();
    cache_attention(*base.cache, sb, 0, q.data(), 1, shape.n_q, out.data(), options);
    const double base_time = omp_get_wtime() - t0;
    if (cold) evict_caches();
    const double t1 = omp_get_wtime();
    cache_attention(*f.cache, s, 0, q.data(), 1, shape.n_q, out.data(), options);
    const double time = omp_get_wtime() - t1;
    benchmark::DoNotOptimize(out.data());
    state.SetIterationTime(time);
    times.push_back(time);
    base_times.push_back(base_time);
    ratios.push_back(base_time / time);
  }
  state.counters["median_us"] = median(times) * 1e6;
  state.counters["f16_median_us"] = median(base_times) * 1e6;
  state.counters["speedup_vs_f16"] = median(ratios);
  const KvMemoryStats mem = f.cache->memory();
  state.counters["cache_bytes_per_token"] =
      static_cast<double>(mem.total_bytes) / static_cast<double>(mem.tokens);
  state.SetLabel(std::string(shape.name) + " q" + std::to_string(shape.n_q) + "/kv" +
                 std::to_string(shape.n_kv) + " d" + std::to_string(shape.dim) + " " + codec +
                 " threads " + std::to_string(threads) + " kernels " + best_kernels().name +
                 (cold ? " cold (caches evicted before each call)" : ""));
}

// Encoding one token's K and V for all KV heads of a layer (rotation, polar transform, angle
// codes, page writes), as a decode step does after computing k and v.
void encode_token(benchmark::State& state, Shape shape, std::string codec) {
  KvCacheOptions o;
  o.n_layers = 1;
  o.n_kv_heads = shape.n_kv;
  o.head_dim = shape.dim;
  const CodecPair pair = codec_pair(codec);
  o.key_codec = pair.key;
  o.value_codec = pair.value;
  KvCache cache(o);
  const size_t row = static_cast<size_t>(shape.n_kv) * shape.dim;
  const auto k = gaussian(1024 * row, 4), v = gaussian(1024 * row, 5);
  SequenceId s = cache.add_sequence();
  size_t t = 0;
  for (auto _ : state) {
    cache.append(s, 0, &k[t * row], &v[t * row], 1);
    if (++t == 1024) {  // keep the cache small: a fresh sequence every 1024 tokens
      state.PauseTiming();
      cache.free_sequence(s);
      s = cache.add_sequence();
      t = 0;
      state.ResumeTiming();
    }
  }
  state.SetLabel(std::string(shape.name) + " kv" + std::to_string(shape.n_kv) + " d" +
                 std::to_string(shape.dim) + " " + codec + " K+V of one token, all heads");
}

// Per-stage timings of the fused kernels over one KV head's pages (context 4096, the first sequence
// of the filled cache): scoring the keys, the softmax step, accumulating the values. The stages of
// one decode step are these three summed over the KV heads, plus tables, rotation and merge.
enum class Stage { kScore, kSoftmax, kValue };
void kernel_stage(benchmark::State& state, Shape shape, std::string codec, Stage stage) {
  Filled& f = filled(shape, codec);
  const KvCache::Impl& m = f.cache->impl();
  const SequenceLayer& sl = m.layer(f.by_context.at(4096), 0, "bench");
  const KernelSet& k = best_kernels();
  const int g = shape.n_q / shape.n_kv, dim = shape.dim;
  const size_t T = static_cast<size_t>(m.options.page_tokens);
  const auto q = gaussian(static_cast<size_t>(g) * dim, 3);
  std::vector<float> qs(q.size());
  for (size_t i = 0; i < q.size(); ++i) qs[i] = q[i] / std::sqrt(static_cast<float>(dim));
  std::vector<float> scores(g * T, 0.01f), acc(static_cast<size_t>(g) * dim * 16);
  PolarTables kt, vt;
  const auto* kp = dynamic_cast<const PolarPageFormat*>(&m.key_format_of(sl));
  const auto* vp = dynamic_cast<const PolarPageFormat*>(&m.value_format_of(sl));
  if (kp) build_polar_tables(*kp, qs.data(), g, kt, k.int8_score_tables);
  if (vp) build_polar_tables(*vp, nullptr, 0, vt, false);
  double best = 1e30;
  for (auto _ : state) {
    const double t0 = omp_get_wtime();
    for (size_t page = 0; page < sl.pages; ++page) {
      const uint8_t* kr = m.key_region(sl, page, 0);
      const uint8_t* vr = m.value_region(sl, page, 0);
      switch (stage) {
        case Stage::kScore:
          if (kp)
            k.score_polar(kt, kr, 0, T, g, scores.data(), T);
          else if (codec == "f16")
            k.score_f16(qs.data(), g, dim, reinterpret_cast<const uint16_t*>(kr), dim, T,
                        scores.data(), T);
          else
            k.score_f32(qs.data(), g, dim, reinterpret_cast<const float*>(kr), dim, T,
                        scores.data(), T);
          break;
        case Stage::kSoftmax: {
          for (int h = 0; h < g; ++h) {
            float mx = 0.0f, l = 0.0f;
            benchmark::DoNotOptimize(k.softmax(&scores[h * T], T, &mx, &l));
            for (size_t t = 0; t < T; ++t) scores[h * T + t] = 0.01f;
          }
          break;
        }
        case Stage::kValue:
          if (vp)
            k.value_polar(vt, vr, 0, T, g, scores.data(), T, acc.data());
          else if (codec == "f16")
            k.value_f16(scores.data(), T, g, dim, reinterpret_cast<const uint16_t*>(vr), dim, T,
                        acc.data());
          else
            k.value_f32(scores.data(), T, g, dim, reinterpret_cast<const float*>(vr), dim, T,
                        acc.data());
          break;
      }
    }
    benchmark::DoNotOptimize(scores.data());
    benchmark::DoNotOptimize(acc.data());
    best = std::min(best, omp_get_wtime() - t0);
  }
  state.counters["min_us"] = best * 1e6;
  state.SetLabel(std::string(shape.name) + " " + codec + " one KV head, 4096 tokens, " +
                 std::to_string(g) + " query heads, kernels " + k.name);
}

int register_all() {
  for (const Shape& shape : kShapes) {
    for (const char* codec : kCodecs) {
      for (auto [stage, name] : {std::pair{Stage::kScore, "score"},
                                 {Stage::kSoftmax, "softmax"},
                                 {Stage::kValue, "value"}}) {
        benchmark::RegisterBenchmark(
            (std::string("stage/") + shape.name + "/" + codec + "/" + name).c_str(), kernel_stage,
            shape, std::string(codec), stage)
            ->Unit(benchmark::kMicrosecond);
      }
    }
  }
  const int all = omp_get_max_threads();
  for (const Shape& shape : kShapes) {
    for (const char* codec : {"paper", "f16"}) {
      benchmark::RegisterBenchmark(
          (std::string("encode_token/") + shape.name + "/" + codec).c_str(), encode_token, shape,
          std::string(codec))
          ->Unit(benchmark::kMicrosecond);
    }
  }
  for (const Shape& shape : kShapes) {
    for (int context : kContexts) {
      for (int threads : {1, all}) {
        if (threads == all && all == 1 && threads != 1) continue;
        for (const char* codec : kCodecs) {
          const std::string name = std::string("decode_attention/") + shape.name + "/ctx" +
                                   std::to_string(context) + "/threads" + std::to_string(threads) +
                                   "/" + codec;
          benchmark::RegisterBenchmark(name.c_str(), decode_attention, shape, std::string(codec),
                                       context, threads, false)
              ->Unit(benchmark::kMicrosecond)
              ->MinTime(0.5)
              ->UseManualTime();
        }
        // The same step with the KV cache in DRAM (as in a many-layer model): the long contexts,
        // the codec against its f16 pair.
        if (context >= 16384) {
          const std::string name = std::string("decode_attention_cold/") + shape.name + "/ctx" +
                                   std::to_string(context) + "/threads" + std::to_string(threads) +
                                   "/paper";
          // 30 pairs: each costs two evictions (~60 ms each here) besides the calls.
          benchmark::RegisterBenchmark(name.c_str(), decode_attention, shape, std::string("paper"),
                                       context, threads, true)
              ->Unit(benchmark::kMicrosecond)
              ->Iterations(30)
              ->UseManualTime();
        }
        if (all == 1) break;
      }
    }
  }
  return 0;
}
const int registered = register_all();

}  // namespace
}  // namespace polarquant
