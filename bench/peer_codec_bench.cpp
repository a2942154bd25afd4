// Encode and decode speed of every codec (peers and PolarQuant presets) on one thread, d = 128,
// 4096 Gaussian vectors (32-token groups for KIVI keys). Each row reports vectors per second and
// `x_f16`, its time per vector divided by the f16 codec's time measured first in the same run. The
// ratio uses the benchmark thread's CPU time (the codecs are single-threaded), so it holds on a
// machine shared with other work.
#include <benchmark/benchmark.h>
#include <polarquant/codec.h>

#include <ctime>
#include <map>
#include <string>
#include <vector>

#include "eval/synthetic.h"

namespace {

constexpr int kDim = 128;

double thread_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}
constexpr size_t kVectors = 4096;

// Seconds per vector of the f16 baseline, by operation ("encode", "decode").
std::map<std::string, double>& baseline() {
  static std::map<std::string, double> b;
  return b;
}

void run(benchmark::State& state, const std::string& name, bool encode) {
  const auto codec = polarquant::make_codec(name, kDim);
  const size_t groups = kVectors / static_cast<size_t>(codec->group_size());
  const auto x = polarquant::gaussian_data(kVectors, kDim, 1);
  std::vector<uint8_t> codes(groups * codec->group_bytes());
  std::vector<float> y(x.size());
  codec->encode(x.data(), groups, codes.data());
  double seconds = 0.0;
  for (auto _ : state) {
    const double start = thread_seconds();
    if (encode) {
      codec->encode(x.data(), groups, codes.data());
      benchmark::DoNotOptimize(codes.data());
    } else {
      codec->decode(codes.data(), groups, y.data());
      benchmark::DoNotOptimize(y.data());
    }
    seconds += thread_seconds() - start;
  }
  const double per_vector = seconds / (static_cast<double>(state.iterations()) * kVectors);
  const std::string op = encode ? "encode" : "decode";
  if (name == "f16") baseline()[op] = per_vector;
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kVectors));
  state.SetLabel("d=" + std::to_string(kDim) + " n=" + std::to_string(kVectors) +
                 " bits=" + std::to_string(codec->bits_per_coordinate()).substr(0, 5));
  if (baseline().count(op) != 0) state.counters["x_f16"] = per_vector / baseline()[op];
}

const bool registered = [] {
  // f16 first: its time is the baseline of the rows after it.
  for (const bool encode : {true, false}) {
    for (const auto& name : polarquant::codec_names()) {
      if (name == "f32") continue;
      benchmark::RegisterBenchmark(((encode ? "encode/" : "decode/") + name).c_str(),
                                   [name, encode](benchmark::State& s) { run(s, name, encode); })
          ->Unit(benchmark::kMicrosecond);
    }
  }
  return true;
}();

}  // namespace
