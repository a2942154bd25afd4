// `polarquant compare`: one row per codec (or key/value codec pair) on generated data or a K/V
// dump.
#include <polarquant/codec_pair.h>
#include <polarquant/error.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "command.h"
#include "eval/compare.h"
#include "eval/kv_dump.h"

namespace polarquant::cli {
namespace {

struct CompareArgs {
  std::string data = "keylike";
  int dim = 128;
  size_t count = 4096;
  size_t queries = 64;
  std::string codecs;
  size_t recent = 0;
  uint64_t seed = 1;
  double min_time = 0.2;
  size_t center_keys = 0;  // 0: keys as dumped; N: minus their mean over the first N tokens
  bool by_layer = false;
  bool json = false;
  bool markdown = false;
};

std::vector<std::string> split(const std::string& list) {
  std::vector<std::string> out;
  std::stringstream ss(list);
  for (std::string item; std::getline(ss, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

void print_cells(const std::vector<std::string>& header,
                 const std::vector<std::vector<std::string>>& cells, bool markdown) {
  if (markdown) {
    std::string line = "|", rule = "|";
    for (size_t c = 0; c < header.size(); ++c) {
      line += " " + header[c] + " |";
      rule += c == 0 ? "---|" : "---:|";
    }
    std::printf("%s\n%s\n", line.c_str(), rule.c_str());
    for (const auto& row : cells) {
      std::string s = "|";
      for (const auto& cell : row) s += " " + cell + " |";
      std::printf("%s\n", s.c_str());
    }
    return;
  }
  std::vector<size_t> width(header.size());
  for (size_t c = 0; c < header.size(); ++c) {
    width[c] = header[c].size();
    for (const auto& row : cells) width[c] = std::max(width[c], row[c].size());
  }
  auto print_row = [&](const std::vector<std::string>& row) {
    for (size_t c = 0; c < row.size(); ++c) {
      std::printf(c == 0 ? "%-*s" : "  %*s", static_cast<int>(width[c]), row[c].c_str());
    }
    std::printf("\n");
  };
  print_row(header);
  for (const auto& row : cells) print_row(row);
}

void print_table(const std::vector<CompareRow>& rows, bool markdown) {
  const std::vector<std::string> header = {
      "codec",      "bits/coord",   "vs fp16",    "NMSE",         "NMSE K",     "NMSE V",
      "IP rel err", "attn rel err", "softmax KL", "encode vec/s", "attn tok/s", "cache attn tok/s"};
  std::vector<std::vector<std::string>> cells;
  for (const auto& r : rows) {
    cells.push_back(
        {r.codec, fmt("%.3f", r.bits_per_coordinate), fmt("%.2fx", r.compression_vs_fp16),
         fmt("%.3e", r.nmse), fmt("%.3e", r.nmse_k), fmt("%.3e", r.nmse_v),
         fmt("%.3e", r.inner_product_error), fmt("%.3e", r.attention_error),
         fmt("%.3e", r.softmax_kl), fmt("%.3g", r.encode_vectors_per_s),
         fmt("%.3g", r.attention_tokens_per_s), fmt("%.3g", r.cache_attention_tokens_per_s)});
  }
  print_cells(header, cells, markdown);
}

nlohmann::json row_json(const CompareRow& r) {
  return {{"codec", r.codec},
          {"key_codec", r.key_codec},
          {"value_codec", r.value_codec},
          {"bits_per_coordinate", r.bits_per_coordinate},
          {"key_bits_per_coordinate", r.key_bits},
          {"value_bits_per_coordinate", r.value_bits},
          {"compression_vs_fp16", r.compression_vs_fp16},
          {"nmse", r.nmse},
          {"nmse_k", r.nmse_k},
          {"nmse_v", r.nmse_v},
          {"inner_product_error", r.inner_product_error},
          {"attention_error", r.attention_error},
          {"softmax_kl", r.softmax_kl},
          {"encode_vectors_per_s", r.encode_vectors_per_s},
          {"attention_tokens_per_s", r.attention_tokens_per_s},
          {"cache_attention_tokens_per_s", r.cache_attention_tokens_per_s}};
}

CompareOptions compare_options(const CompareArgs& args) {
  CompareOptions options;
  options.codecs = split(args.codecs);
  options.recent_tokens = args.recent;
  options.min_seconds = args.min_time;
  return options;
}

// --by-layer: each dumped layer compared alone, so a codec's error can be located by layer; the
// quality columns only (the throughput of one layer says nothing new).
void run_by_layer(const CompareArgs& args, KvDump dump) {
  std::vector<std::vector<std::string>> cells;
  nlohmann::json out = {{"data", args.data},
                        {"center_keys", args.center_keys},
                        {"recent_tokens", args.recent},
                        {"layers", nlohmann::json::array()}};
  CompareOptions options = compare_options(args);
  std::vector<KvDumpLayer> layers = std::move(dump.layers);
  for (auto& layer : layers) {
    dump.layers.assign(1, std::move(layer));  // the dump's counts with this layer alone, no copy
    const int id = dump.layers[0].layer_id;
    CompareData data = dump_compare_data(dump, args.queries);
    if (args.center_keys > 0) center_compare_keys(data, args.center_keys);
    nlohmann::json rows = nlohmann::json::array();
    for (const auto& r : run_compare(data, options)) {
      rows.push_back(row_json(r));
      cells.push_back({std::to_string(id), r.codec, fmt("%.3f", r.bits_per_coordinate),
                       fmt("%.3e", r.nmse_k), fmt("%.3e", r.nmse_v),
                       fmt("%.3e", r.inner_product_error), fmt("%.3e", r.attention_error),
                       fmt("%.3e", r.softmax_kl)});
    }
    out["layers"].push_back({{"layer", id}, {"rows", rows}});
  }
  if (args.json) {
    std::printf("%s\n", out.dump(2).c_str());
    return;
  }
  std::printf(
      "%s%s, one layer at a time; keys centered on the first %zu tokens (0: not); recent "
      "fp16 tokens: %zu\n\n",
      args.markdown ? "Data: " : "# ", args.data.c_str(), args.center_keys, args.recent);
  print_cells({"layer", "codec", "bits/coord", "NMSE K", "NMSE V", "IP rel err", "attn rel err",
               "softmax KL"},
              cells, args.markdown);
}

void run(const CompareArgs& args) {
  const bool generated = args.data == "gaussian" || args.data == "keylike";
  if (args.by_layer && generated) {
    throw_invalid(
        "compare: --by-layer needs a K/V dump file as --data (write one with `polarquant "
        "dump-kv`), got '" +
        args.data + "'");
  }
  CompareData data;
  if (generated) {
    data = generated_compare_data(
        args.data == "keylike" ? GeneratedKind::kKeylike : GeneratedKind::kGaussian, args.dim,
        args.count, args.queries, args.seed);
  } else {
    KvDump dump = read_kv_dump(args.data);
    if (args.by_layer) return run_by_layer(args, std::move(dump));
    data = dump_compare_data(dump, args.queries);
  }
  if (args.center_keys > 0) center_compare_keys(data, args.center_keys);
  const auto rows = run_compare(data, compare_options(args));

  if (args.json) {
    nlohmann::json out;
    out["data"] = data.source;
    out["recent_tokens"] = args.recent;
    out["rows"] = nlohmann::json::array();
    for (const auto& r : rows) out["rows"].push_back(row_json(r));
    std::printf("%s\n", out.dump(2).c_str());
    return;
  }
  std::printf("%s%s; recent fp16 tokens: %zu\n\n", args.markdown ? "Data: " : "# ",
              data.source.c_str(), args.recent);
  print_table(rows, args.markdown);
}

const CommandRegistration registration("compare", [](CLI::App& app) {
  auto args = std::make_shared<CompareArgs>();
  std::string names;
  for (const auto& n : codec_pair_names()) names += (names.empty() ? "" : ",") + n;
  auto* cmd = app.add_subcommand(
      "compare",
      "Compare KV-cache codecs: bits, NMSE, inner-product and attention error, throughput");
  cmd->add_option("--data", args->data, "gaussian, keylike, or a K/V dump file (.kv)")
      ->capture_default_str();
  cmd->add_option("--dim", args->dim, "vector dimension (generated data)")->capture_default_str();
  cmd->add_option("--count", args->count, "tokens (generated data)")->capture_default_str();
  cmd->add_option("--queries", args->queries,
                  "queries (generated data) or last tokens whose queries are used (dump)")
      ->capture_default_str();
  cmd->add_option("--codecs", args->codecs,
                  "comma-separated codec or pair names; default all of " + names);
  cmd->add_option("--recent", args->recent, "most recent tokens kept in fp16 for every codec")
      ->capture_default_str();
  cmd->add_option("--seed", args->seed, "seed of the generated data")->capture_default_str();
  cmd->add_option("--min-time", args->min_time, "seconds per throughput measurement")
      ->capture_default_str();
  cmd->add_option("--center-keys", args->center_keys,
                  "subtract each head's per-channel key mean over its first N tokens, as the "
                  "runtime's cache does (0: off)")
      ->capture_default_str();
  cmd->add_flag("--by-layer", args->by_layer,
                "compare each layer of a K/V dump alone (quality columns, one row per layer and "
                "codec)");
  cmd->add_flag("--json", args->json, "JSON output");
  cmd->add_flag("--markdown", args->markdown, "Markdown table");
  cmd->callback([args] { run(*args); });
});

}  // namespace
}  // namespace polarquant::cli
