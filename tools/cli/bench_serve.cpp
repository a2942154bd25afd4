// `polarquant bench-serve`: batched serving on the GPU. B sequences with prompts of P tokens (or
// ragged lengths) are prefilled one by one, then decoded together, one greedy token per sequence
// per step, each stopping after its own number of tokens; prints prefill time, decode tokens/s,
// time per output token and the cache's bytes. `--plan` prints how many tokens fit in the GPU's
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
};

model::LlamaConfig named_shape(const std::string& name) {
  model::LlamaConfig c;
  if (name == "llama3-8b") {
    c.dim = 4096;
    c.hidden_dim = 14336;
    c.n_layers = 32;
    c.n_heads = 32;
    c.n_kv_heads = 8;
    c.head_dim = 128;
    c.vocab_size = 128256;
    c.context_length = 131072;
    c.rope_theta = 500000.0f;
  } else {  // smollm2-135m
    c.dim = 576;
    c.hidden_dim = 1536;
    c.n_layers = 30;
    c.n_heads = 9;
    c.n_kv_heads = 3;
    c.head_dim = 64;
    c.vocab_size = 49152;
    c.context_length = 8192;
    c.rope_theta = 100000.0f;
  }
  return c;
}

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
      std::printf("  (GPU free %.2f GiB; weights %.2f GiB; scratch %.2f GiB at B=%d)\n",
                  p.free_bytes / 1073741824.0, p.weight_bytes / 1073741824.0,
                  p.scratch_bytes / 1073741824.0, base.max_sequences);
    }
  }
  if (json) std::printf("%s\n", rows.dump(2).c_str());
}

void run(BenchServeArgs& a, CLI::App* cmd) {
  take_llama_style_flags(cmd, a.model);
  if (a.batch < 1 || a.prompt < 1 || a.gen < 1)
    throw_invalid("--batch, --prompt and --gen must be >= 1");
  std::unique_ptr<model::LlamaModel> file_model;
  model::LlamaConfig config;
  if (a.shape.empty()) {
    file_model = std::make_unique<model::LlamaModel>(model::LlamaModel::load(a.model.model));
    config = file_model->config();
  } else {
    config = named_shape(a.shape);
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
  if (a.plan) {
    print_plan(config, rt, a.model.json);
    return;
  }
  std::unique_ptr<cuda::CudaTransformer> tf =
      file_model ? std::make_unique<cuda::CudaTransformer>(*file_model, rt)
                 : std::make_unique<cuda::CudaTransformer>(config, a.seed, rt);
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
  size_t prompt_tokens = 0;
  for (int b = 0; b < a.batch; ++b) {
    std::vector<int> p(prompt_len[b]);
    for (int& t : p) t = token(rng);
    tf->forward(ids[b], p.data(), p.size(), logits, false);
    next[b] = static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    prompt_tokens += p.size();
  }
  tf->synchronize();
  const double prefill_s = seconds(t0);
  const KvMemoryStats mem = tf->memory();

  std::vector<int> produced(a.batch, 1);  // the prefill chose each sequence's first token
  size_t generated = static_cast<size_t>(a.batch), steps = 0;
  t0 = std::chrono::steady_clock::now();
  while (true) {
    std::vector<SequenceId> active;
    std::vector<int> in, out;
    std::vector<int> who;
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
    ++steps;
    for (size_t i = 0; i < who.size(); ++i) {
      next[who[i]] = out[i];
      ++produced[who[i]];
      ++generated;
      if (produced[who[i]] == gen_len[who[i]]) tf->free_sequence(ids[who[i]]);
    }
  }
  const double decode_s = seconds(t0);
  const size_t decoded = generated - static_cast<size_t>(a.batch);
  const double tps = decoded / std::max(decode_s, 1e-9);
  const double tpot_ms = 1e3 * decode_s / std::max<size_t>(steps, 1);
  if (a.model.json) {
    const nlohmann::json j = {{"device", tf->device_name()},
                              {"shape", a.shape.empty() ? a.model.model : a.shape},
                              {"key_codec", rt.key_codec},
                              {"value_codec", rt.value_codec},
                              {"decode_path", tf->decode_path()},
                              {"batch", a.batch},
                              {"prompt", a.prompt},
                              {"gen", a.gen},
                              {"ragged", a.ragged},
                              {"prefill_seconds", prefill_s},
                              {"prefill_tokens_per_s", prompt_tokens / prefill_s},
                              {"decode_seconds", decode_s},
                              {"decode_tokens_per_s", tps},
                              {"time_per_step_ms", tpot_ms},
                              {"decode_steps", steps},
                              {"kv_bytes_after_prefill", mem.total_bytes},
                              {"kv_fp16_bytes_after_prefill", mem.fp16_bytes}};
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("%s | %s | -ctk %s -ctv %s | decode: %s\n", tf->device_name().c_str(),
              a.shape.empty() ? a.model.model.c_str() : (a.shape + " (random weights)").c_str(),
              rt.key_codec.c_str(), rt.value_codec.c_str(), tf->decode_path().c_str());
  std::printf("batch %d, prompt %d, gen %d%s\n", a.batch, a.prompt, a.gen,
              a.ragged ? " (ragged: prompts P/2..P, generations G..G/2)" : "");
  std::printf("prefill: %zu tokens in %.3f s (%.0f tok/s)\n", prompt_tokens, prefill_s,
              prompt_tokens / prefill_s);
  std::printf("decode:  %zu tokens in %.3f s, %zu steps: %.1f tok/s, %.2f ms per step\n", decoded,
              decode_s, steps, tps, tpot_ms);
  std::printf("KV cache after prefill: %.1f MiB (fp16 would be %.1f MiB, %.2fx)\n",
              mem.total_bytes / 1048576.0, mem.fp16_bytes / 1048576.0,
              mem.total_bytes > 0 ? static_cast<double>(mem.fp16_bytes) / mem.total_bytes : 0.0);
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
      ->check(CLI::IsMember({"llama3-8b", "smollm2-135m"}));
  cmd->add_option("--batch,-b", args->batch, "sequences decoded together")->capture_default_str();
  cmd->add_option("--prompt,-P", args->prompt, "prompt tokens per sequence")->capture_default_str();
  cmd->add_option("--gen,-g", args->gen, "tokens generated per sequence")->capture_default_str();
  cmd->add_flag("--ragged", args->ragged,
                "prompts from P/2 to P and generations from G to G/2: sequences end apart");
  cmd->add_flag("--plan", args->plan,
                "print how many tokens fit in the GPU's free memory with each cache, and exit");
  cmd->add_option("--seed", args->seed, "seed of the random weights and tokens")
      ->capture_default_str();
  cmd->callback([args, cmd] { run(*args, cmd); });
});

}  // namespace
}  // namespace polarquant::cli
