// `polarquant bench-serve`: batched serving on the GPU. B sequences with prompts of P tokens (or
// ragged lengths) are prefilled one by one, then decoded together, one greedy token per sequence
// per step, each stopping after its own number of tokens; prints prefill time, decode tokens/s,
// time per output token and the cache's bytes; with --codecs, for several caches in one run,
// side by side with their ratios to the first. `--plan` prints how many tokens fit in the GPU's
// free memory with each cache instead. Random weights of a named shape (--shape) measure speed
// on models not at hand; token ids are random (speed does not depend on them).
#include <polarquant/error.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "command.h"
#include "model_options.h"

#ifdef POLARQUANT_WITH_CUDA
#include "cuda_model/cuda_transformer.h"
#endif

namespace polarquant::cli {
namespace {

struct BenchServeArgs {
  ModelFlags model;
  std::string shape;  // "", "llama3-8b", "smollm2-135m"
  int batch = 8;
  int prompt = 1024;
  int gen = 128;
  bool ragged = false;
  bool plan = false;
  uint64_t seed = 1;
  double gpu_memory_gib = 0.0;  // 0: all free memory
  std::string codecs;           // several caches in one run, the first the baseline
};

#ifdef POLARQUANT_WITH_CUDA
double seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void print_plan(const model::LlamaConfig& c, const model::RuntimeOptions& base, bool json) {
  nlohmann::json rows = nlohmann::json::array();
  size_t f16_tokens = 0;
  std::vector<std::pair<std::string, std::string>> pairs = {
      {"f16", "f16"}, {"paper", "paper"}, {"polar37", "polar37"}};
  if (base.key_codec != base.value_codec ||
      (base.key_codec != "f16" && base.key_codec != "paper" && base.key_codec != "polar37"))
    pairs.push_back({base.key_codec, base.value_codec});
  for (const auto& [k, v] : pairs) {
    model::RuntimeOptions o = base;
    o.key_codec = k;
    o.value_codec = v;
    const cuda::MemoryPlan p = cuda::plan_memory(c, o);
    if (k == "f16" && v == "f16") {
      f16_tokens = p.max_tokens();
      if (!json) {
        std::printf("%-18s %14s %12s %16s %12s\n", "cache (K/V)", "bytes/token", "max tokens",
                    "vs f16", "context @B");
      }
    }
    const double ratio = f16_tokens > 0 ? static_cast<double>(p.max_tokens()) / f16_tokens : 0.0;
    const size_t per_seq = p.max_tokens() / static_cast<size_t>(base.max_sequences);
    if (json) {
      rows.push_back({{"key_codec", k},
                      {"value_codec", v},
                      {"kv_bytes_per_token", p.kv_bytes_per_token},
                      {"max_tokens", p.max_tokens()},
                      {"vs_f16", ratio},
                      {"free_bytes", p.free_bytes},
                      {"weight_bytes", p.weight_bytes},
                      {"scratch_bytes", p.scratch_bytes}});
    } else {
      std::printf("%-18s %14zu %12zu %15.2fx %12zu\n", (k + "/" + v).c_str(), p.kv_bytes_per_token,
                  p.max_tokens(), ratio, per_seq);
    }
    if (k == "f16" && v == "f16" && !json) {
      std::printf(
          "  (GPU memory for the run %.2f GiB; weights %.2f GiB; scratch %.2f GiB at B=%d)\n",
          p.free_bytes / 1073741824.0, p.weight_bytes / 1073741824.0,
          p.scratch_bytes / 1073741824.0, base.max_sequences);
    }
  }
  if (json) std::printf("%s\n", rows.dump(2).c_str());
}

struct ServeResult {
  std::string key_codec, value_codec, decode_path, device;
  double prefill_s = 0.0, prefill_tps = 0.0, decode_s = 0.0, decode_tps = 0.0, step_ms = 0.0;
  size_t steps = 0, decoded = 0, prompt_tokens = 0;
  KvMemoryStats memory;  // after the prefill
};

// Prefills every sequence (the same random prompts for every cache: the seed decides them), then
// decodes them together until each has its number of tokens.
ServeResult serve(const BenchServeArgs& a, const model::LlamaConfig& config,
                  const model::LlamaModel* file_model, const model::RuntimeOptions& rt) {
  std::unique_ptr<cuda::CudaTransformer> tf =
      file_model ? std::make_unique<cuda::CudaTransformer>(*file_model, rt)
                 : std::make_unique<cuda::CudaTransformer>(config, a.seed, rt);
  ServeResult r;
  r.key_codec = rt.key_codec;
  r.value_codec = rt.value_codec;
  r.decode_path = tf->decode_path();
  r.device = tf->device_name();
  std::mt19937_64 rng(a.seed);
  std::uniform_int_distribution<int> token(0, config.vocab_size - 1);
  std::vector<SequenceId> ids;
  std::vector<int> prompt_len, gen_len;
  for (int b = 0; b < a.batch; ++b) {
    // Ragged: prompts from P/2 to P and generations from G/2 to G, so sequences end apart.
    const double f = a.ragged && a.batch > 1 ? 0.5 + 0.5 * b / (a.batch - 1) : 1.0;
    prompt_len.push_back(std::max(1, static_cast<int>(a.prompt * f)));
    gen_len.push_back(std::max(1, static_cast<int>(a.gen * (a.ragged ? 1.5 - f : 1.0))));
    ids.push_back(tf->add_sequence());
  }
  std::vector<float> logits;
  std::vector<int> next(a.batch);
  tf->synchronize();
  auto t0 = std::chrono::steady_clock::now();
  for (int b = 0; b < a.batch; ++b) {
    std::vector<int> p(prompt_len[b]);
    for (int& t : p) t = token(rng);
    tf->forward(ids[b], p.data(), p.size(), logits, false);
    next[b] = static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    r.prompt_tokens += p.size();
  }
  tf->synchronize();
  r.prefill_s = seconds(t0);
  r.prefill_tps = r.prompt_tokens / r.prefill_s;
  r.memory = tf->memory();

  std::vector<int> produced(a.batch, 1);  // the prefill chose each sequence's first token
  t0 = std::chrono::steady_clock::now();
  while (true) {
    std::vector<SequenceId> active;
    std::vector<int> in, out, who;
    for (int b = 0; b < a.batch; ++b) {
      if (produced[b] < gen_len[b]) {
        active.push_back(ids[b]);
        in.push_back(next[b]);
        who.push_back(b);
      }
    }
    if (active.empty()) break;
    out.resize(active.size());
    tf->decode_greedy(active.data(), in.data(), active.size(), out.data());
    ++r.steps;
    for (size_t i = 0; i < who.size(); ++i) {
      next[who[i]] = out[i];
      ++r.decoded;
      if (++produced[who[i]] == gen_len[who[i]]) tf->free_sequence(ids[who[i]]);
    }
  }
  r.decode_s = seconds(t0);
  r.decode_tps = r.decoded / std::max(r.decode_s, 1e-9);
  r.step_ms = 1e3 * r.decode_s / std::max<size_t>(r.steps, 1);
  return r;
}

void print_results(const BenchServeArgs& a, const model::RuntimeOptions& rt,
                   const std::vector<ServeResult>& results) {
  const ServeResult& base = results.front();
  if (a.model.json) {
    nlohmann::json rows = nlohmann::json::array();
    for (const ServeResult& r : results) {
      rows.push_back({{"key_codec", r.key_codec},
                      {"value_codec", r.value_codec},
                      {"decode_path", r.decode_path},
                      {"prefill_seconds", r.prefill_s},
                      {"prefill_tokens_per_s", r.prefill_tps},
                      {"prefill_time_vs_first", r.prefill_s / base.prefill_s},
                      {"decode_seconds", r.decode_s},
                      {"decode_tokens_per_s", r.decode_tps},
                      {"decode_speed_vs_first", r.decode_tps / base.decode_tps},
                      {"time_per_step_ms", r.step_ms},
                      {"decode_steps", r.steps},
                      {"kv_bytes_after_prefill", r.memory.total_bytes},
                      {"kv_fp16_bytes_after_prefill", r.memory.fp16_bytes}});
    }
    const nlohmann::json j = {{"device", base.device},
                              {"shape", a.shape.empty() ? a.model.model : a.shape},
                              {"batch", a.batch},
                              {"prompt", a.prompt},
                              {"gen", a.gen},
                              {"ragged", a.ragged},
                              {"sink_tokens", rt.sink_tokens},
                              {"recent_tokens", rt.recent_tokens},
                              {"runs", rows}};
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("%s | %s | batch %d, prompt %d, gen %d%s | sink %d, recent %d\n", base.device.c_str(),
              a.shape.empty() ? a.model.model.c_str() : (a.shape + " (random weights)").c_str(),
              a.batch, a.prompt, a.gen, a.ragged ? " (ragged: prompts P/2..P, gen G..G/2)" : "",
              rt.sink_tokens, rt.recent_tokens);
  std::printf("%-22s %-20s %10s %10s %8s %10s %8s %9s %10s %7s\n", "cache (K/V)", "decode path",
              "prefill s", "tok/s", "vs 1st", "decode t/s", "vs 1st", "ms/step", "KV MiB",
              "vs f16");
  for (const ServeResult& r : results) {
    std::printf("%-22s %-20s %10.3f %10.0f %7.3fx %10.1f %7.3fx %9.2f %10.1f %6.2fx\n",
                (r.key_codec + "/" + r.value_codec).c_str(), r.decode_path.c_str(), r.prefill_s,
                r.prefill_tps, r.prefill_s / base.prefill_s, r.decode_tps,
                r.decode_tps / base.decode_tps, r.step_ms, r.memory.total_bytes / 1048576.0,
                r.memory.total_bytes > 0
                    ? static_cast<double>(r.memory.fp16_bytes) / r.memory.total_bytes
                    : 0.0);
  }
  std::printf(
      "(vs 1st: prefill time and decode tok/s relative to the first cache of the run; KV: "
      "bytes after the prefill)\n");
}

void run(BenchServeArgs& a, CLI::App* cmd) {
  finish_codec_flags(a.model);
  if (a.batch < 1 || a.prompt < 1 || a.gen < 1)
    throw_invalid("--batch, --prompt and --gen must be >= 1");
  std::unique_ptr<model::LlamaModel> file_model;
  model::LlamaConfig config;
  if (a.shape.empty()) {
    file_model = std::make_unique<model::LlamaModel>(model::LlamaModel::load(a.model.model));
    config = file_model->config();
  } else {
    config = model::model_shape(a.shape);
  }
  model::RuntimeOptions rt = runtime_options(a.model);
  rt.device = "cuda";
  rt.max_sequences = a.batch;
  rt.max_context = static_cast<size_t>(a.prompt) + a.gen;
  if (rt.max_context > static_cast<size_t>(config.context_length)) {
    throw_invalid("--prompt + --gen = " + std::to_string(rt.max_context) +
                  " exceeds the model's context of " + std::to_string(config.context_length));
  }
  rt.prefill_chunk = std::max(rt.prefill_chunk, 512);
  if (a.gpu_memory_gib < 0.0)
    throw_invalid("--gpu-memory must be a size in GiB >= 0 (0, the default: all free GPU memory)");
  rt.gpu_memory_limit = static_cast<size_t>(a.gpu_memory_gib * 1073741824.0);
  if (a.plan) {
    print_plan(config, rt, a.model.json);
    return;
  }
  std::vector<eval::CodecChoice> choices;
  for (const auto& c : split_list(a.codecs)) choices.push_back(parse_codec_choice(c));
  if (choices.empty()) choices.push_back({rt.key_codec, rt.value_codec});
  std::vector<ServeResult> results;
  for (const eval::CodecChoice& c : choices) {
    model::RuntimeOptions one = rt;
    one.key_codec = c.key_codec;
    one.value_codec = c.value_codec;
    results.push_back(serve(a, config, file_model.get(), one));
    if (!a.model.json) {
      std::fprintf(stderr, "bench-serve: %s/%s done (prefill %.2f s, decode %.1f tok/s)\n",
                   c.key_codec.c_str(), c.value_codec.c_str(), results.back().prefill_s,
                   results.back().decode_tps);
    }
  }
  print_results(a, rt, results);
}
#else
void run(BenchServeArgs&, CLI::App*) {
  throw Error(ErrorKind::kUnsupported,
              "bench-serve needs a build with CUDA (nvcc was not found when this was built)");
}
#endif

const CommandRegistration registration("bench-serve", [](CLI::App& app) {
  auto args = std::make_shared<BenchServeArgs>();
  CLI::App* cmd = app.add_subcommand(
      "bench-serve",
      "batched prefill + decode on the GPU: prefill time, decode tok/s, cache bytes");
  add_model_flags(cmd, args->model, "paper");
  cmd->add_option("--shape", args->shape,
                  "random weights of a named shape instead of --model (speed only)")
      ->check(CLI::IsMember(model::model_shape_names()));
  cmd->add_option("--batch,-b", args->batch, "sequences decoded together")->capture_default_str();
  cmd->add_option("--prompt,-P", args->prompt, "prompt tokens per sequence")->capture_default_str();
  cmd->add_option("--gen,-g", args->gen, "tokens generated per sequence")->capture_default_str();
  cmd->add_flag("--ragged", args->ragged,
                "prompts from P/2 to P and generations from G to G/2: sequences end apart");
  cmd->add_flag("--plan", args->plan,
                "print how many tokens fit in the GPU's free memory with each cache, and exit");
  cmd->add_option("--codecs", args->codecs,
                  "caches to run one after another in this process, the first the baseline of "
                  "the ratios (NAME or KEY/VALUE, comma-separated, e.g. f16,paper,polar37; "
                  "default: -ctk/-ctv)");
  cmd->add_option("--gpu-memory", args->gpu_memory_gib,
                  "GiB of GPU memory the run may use (weights, scratch and cache; default: all "
                  "that is free): the plan and the refusal use it, as a server sharing the GPU");
  cmd->add_option("--seed", args->seed, "seed of the random weights and tokens")
      ->capture_default_str();
  cmd->callback([args, cmd] { run(*args, cmd); });
});

}  // namespace
}  // namespace polarquant::cli
