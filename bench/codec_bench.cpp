// PolarQuant encode and decode speed, one thread, vectors per second, next to an fp16 conversion of
// the same vectors (the baseline every cache pays at least) measured in the same run.
#include <benchmark/benchmark.h>
#include <polarquant/half.h>
#include <polarquant/polar_codec.h>

#include <string>
#include <vector>

#include "eval/synthetic.h"

namespace polarquant {
namespace {

constexpr size_t kBatch = 256;
const char* const kPresets[] = {"paper", "polar37"};

void label(benchmark::State& state, const std::string& what, int dim) {
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kBatch));
  state.SetLabel(what + " d=" + std::to_string(dim) + " batch=" + std::to_string(kBatch) +
                 " threads=1");
}

void BM_Encode(benchmark::State& state) {
  const int dim = static_cast<int>(state.range(0));
  const char* preset = kPresets[state.range(1)];
  const PolarCodec codec(polar_preset(preset, dim));
  const auto x = gaussian_data(kBatch, dim, 1);
  std::vector<uint8_t> codes(kBatch * codec.group_bytes());
  for (auto _ : state) {
    codec.encode(x.data(), kBatch, codes.data());
    benchmark::DoNotOptimize(codes.data());
  }
  label(state, std::string("encode ") + preset, dim);
}

void BM_Decode(benchmark::State& state) {
  const int dim = static_cast<int>(state.range(0));
  const char* preset = kPresets[state.range(1)];
  const PolarCodec codec(polar_preset(preset, dim));
  const auto x = gaussian_data(kBatch, dim, 1);
  std::vector<uint8_t> codes(kBatch * codec.group_bytes());
  codec.encode(x.data(), kBatch, codes.data());
  std::vector<float> out(x.size());
  for (auto _ : state) {
    codec.decode(codes.data(), kBatch, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  label(state, std::string("decode ") + preset, dim);
}

void BM_Fp16Convert(benchmark::State& state) {  // baseline: float -> fp16 -> float
  const int dim = static_cast<int>(state.range(0));
  const auto x = gaussian_data(kBatch, dim, 1);
  std::vector<uint16_t> h(x.size());
  std::vector<float> out(x.size());
  for (auto _ : state) {
    for (size_t i = 0; i < x.size(); ++i) h[i] = float_to_half(x[i]);
    for (size_t i = 0; i < x.size(); ++i) out[i] = half_to_float(h[i]);
    benchmark::DoNotOptimize(out.data());
  }
  label(state, "fp16 round trip (baseline)", dim);
}

BENCHMARK(BM_Fp16Convert)->Arg(64)->Arg(128);
BENCHMARK(BM_Encode)->ArgsProduct({{64, 128}, {0, 1}});
BENCHMARK(BM_Decode)->ArgsProduct({{64, 128}, {0, 1}});

}  // namespace
}  // namespace polarquant
