// `polarquant dump-kv`: the real keys, values and queries (after RoPE) of chosen layers of a model
// run on a text, in the K/V dump format of src/eval/kv_dump.h, for `polarquant compare --data`.
#include <polarquant/error.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "command.h"
#include "eval/kv_dump.h"
#include "model/transformer.h"
#include "model_options.h"

namespace polarquant::cli {
namespace {

struct DumpArgs {
  ModelFlags model;
  std::string text;
  std::string prompt;
  std::string layers = "0,mid,last";
  std::string out;
  int tokens = 1024;
};

std::vector<int> parse_layers(const std::string& list, int n_layers) {
  std::set<int> ids;
  for (const auto& item : split_list(list)) {
    int id = 0;
    if (item == "all") {
      for (int l = 0; l < n_layers; ++l) ids.insert(l);
      continue;
    }
    if (item == "mid") {
      id = n_layers / 2;
    } else if (item == "last") {
      id = n_layers - 1;
    } else {
      try {
        size_t used = 0;
        id = std::stoi(item, &used);
        if (used != item.size()) throw std::invalid_argument(item);
      } catch (const std::exception&) {
        throw_invalid("--layers item '" + item + "' is not a layer number, 'mid', 'last' or 'all'");
      }
    }
    if (id < 0 || id >= n_layers) {
      throw_invalid("--layers: layer " + std::to_string(id) + " is outside 0.." +
                    std::to_string(n_layers - 1));
    }
    ids.insert(id);
  }
  if (ids.empty()) throw_invalid("--layers names no layer");
  return {ids.begin(), ids.end()};
}

void run(DumpArgs& a, CLI::App* cmd) {
  finish_codec_flags(a.model);
  LoadedModel lm = load_model(a.model);
  const model::LlamaConfig& c = lm.model->config();
  if (a.tokens <= 0 || a.tokens > c.context_length) {
    throw_invalid("--tokens must be in 1.." + std::to_string(c.context_length));
  }
  std::vector<int> tokens;
  if (!a.text.empty()) {
    tokens = tokenize_prefix(*lm.tokenizer, read_text_file(a.text), static_cast<size_t>(a.tokens));
  } else {
    tokens = lm.tokenizer->encode(a.prompt, lm.tokenizer->wants_bos(), false);
  }
  if (tokens.empty()) throw_invalid("nothing to run: give --text FILE or a non-empty -p PROMPT");
  if (tokens.size() > static_cast<size_t>(a.tokens)) tokens.resize(static_cast<size_t>(a.tokens));
  const std::vector<int> layer_ids = parse_layers(a.layers, c.n_layers);

  KvDump dump;
  dump.n_tokens = static_cast<int>(tokens.size());
  dump.n_kv_heads = c.n_kv_heads;
  dump.n_q_heads = c.n_heads;
  dump.head_dim = c.head_dim;
  dump.description =
      "model " + a.model.model + "; " + std::to_string(tokens.size()) + " tokens of " +
      (a.text.empty() ? std::string("a prompt") : a.text) + "; K and Q after RoPE (" +
      (c.arch == model::Architecture::kGemma3
           ? "rotate-half rotation, Q/K RMSNorm first; sliding-window layers included"
           : "adjacent-pair rotation") +
      "); fp32 cache while recording";
  for (int id : layer_ids) dump.layers.push_back({id, {}, {}, {}});
  // The run itself uses an exact cache, so later layers see unquantized history.
  model::RuntimeOptions rt;
  rt.key_codec = rt.value_codec = "f32";
  rt.n_threads = a.model.threads;
  rt.center_keys = a.model.center_keys;
  model::Transformer tf(*lm.model, rt);
  tf.set_observer([&](int layer, const float* q, const float* k, const float* v, size_t n) {
    const auto it = std::find(layer_ids.begin(), layer_ids.end(), layer);
    if (it == layer_ids.end()) return;
    KvDumpLayer& d = dump.layers[static_cast<size_t>(it - layer_ids.begin())];
    d.k.insert(d.k.end(), k, k + n * dump.kv_row());
    d.v.insert(d.v.end(), v, v + n * dump.kv_row());
    d.q.insert(d.q.end(), q, q + n * dump.q_row());
  });
  std::vector<float> logits;
  Progress progress("dump-kv");
  const size_t step = 256;
  for (size_t s = 0; s < tokens.size(); s += step) {
    const size_t n = std::min(step, tokens.size() - s);
    tf.forward(tf.cache().has_sequence(0) ? 0 : tf.add_sequence(), tokens.data() + s, n, logits,
               false);
    progress.update(s + n, tokens.size());
  }
  write_kv_dump(a.out, dump);
  if (a.model.json) {
    std::printf("%s\n", nlohmann::json({{"file", a.out},
                                        {"tokens", dump.n_tokens},
                                        {"layers", layer_ids},
                                        {"n_kv_heads", dump.n_kv_heads},
                                        {"n_q_heads", dump.n_q_heads},
                                        {"head_dim", dump.head_dim}})
                            .dump(2)
                            .c_str());
  } else {
    std::printf("wrote %s: %d tokens, %zu layers, %d KV heads, %d query heads, head_dim %d\n",
                a.out.c_str(), dump.n_tokens, layer_ids.size(), dump.n_kv_heads, dump.n_q_heads,
                dump.head_dim);
  }
}

const CommandRegistration registration("dump-kv", [](CLI::App& app) {
  auto args = std::make_shared<DumpArgs>();
  CLI::App* cmd =
      app.add_subcommand("dump-kv", "write real K, V and queries of chosen layers to a .kv file");
  add_model_flags(cmd, args->model, "f32");
  cmd->add_option("--text,-f", args->text, "text file to run (its first --tokens tokens)");
  cmd->add_option("-p,--prompt", args->prompt, "prompt to run instead of --text");
  cmd->add_option("--tokens", args->tokens, "tokens to run")->capture_default_str();
  cmd->add_option("--layers", args->layers, "comma-separated layer numbers, 'mid', 'last' or 'all'")
      ->capture_default_str();
  cmd->add_option("--out,-o", args->out, "output .kv file")->required();
  cmd->callback([args, cmd] { run(*args, cmd); });
});

}  // namespace
}  // namespace polarquant::cli
