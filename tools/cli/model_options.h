// Flags and helpers shared by the model commands (generate, perplexity, niah, dump-kv): the model
// and tokenizer paths, the K/V codecs (-ctk/-ctv, named like llama.cpp's), threads, and a progress
// indicator on stderr for long runs.
#pragma once

#include <CLI/CLI.hpp>

#include <polarquant/codec.h>
#include <polarquant/codec_pair.h>
#include <polarquant/error.h>
#include <polarquant/polar_codec.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "eval/perplexity.h"
#include "model/generation.h"
#include "model/llama_model.h"
#include "model/tokenizer.h"

namespace polarquant::cli {

struct ModelFlags {
  std::string model = model::default_model_path();
  std::string tokenizer;
  std::string key_codec;
  std::string value_codec;
  int threads = 0;
  bool json = false;
  bool center_keys = true;  // KvCacheOptions::center_keys
  // RuntimeOptions::rope_center_keys: on unless --no-rope-center (--rope-center says it outright).
  bool rope_center = false, no_rope_center = false;
  std::string device = "cpu";
  // KvCacheOptions::sink_tokens. 4 by default: the first tokens draw much of every query's
  // attention, and 4 fp16 tokens cost 0.02 bits per coordinate at 2k context (docs/RESULTS.md 6).
  int sink = 4;
  int recent = 0;                              // KvCacheOptions::recent_tokens
  std::string key_codebooks, value_codebooks;  // PQCB files (KvCacheOptions)
  std::string codebooks = "analytic";          // "online": KvCacheOptions::online_codebooks
};

// default_codec: what -ctk/-ctv default to for this command (a codec or a pair name such as
// kDefaultPolarPair, whose key codec -ctk and value codec -ctv get).
// default_recent: what --recent defaults to (generate keeps a window, see generate.cpp).
inline void add_model_flags(CLI::App* cmd, ModelFlags& f, const std::string& default_codec,
                            int default_recent = 0) {
  f.key_codec = codec_pair(default_codec).key;
  f.value_codec = codec_pair(default_codec).value;
  f.recent = default_recent;
  cmd->add_option(
         "--model,-m", f.model,
         "model file: GGUF or llama2.c checkpoint (default: scripts/fetch_model.sh's cache)")
      ->capture_default_str();
  cmd->add_option("--tokenizer", f.tokenizer, "tokenizer file (llama2.c checkpoints only)");
  cmd->add_option("--ctk,--cache-type-k", f.key_codec,
                  "key codec, also -ctk as in llama.cpp (names as `polarquant compare` lists, "
                  "polar-DIGITS, or a pair name: its key codec)")
      ->capture_default_str();
  cmd->add_option("--ctv,--cache-type-v", f.value_codec, "value codec, also -ctv")
      ->capture_default_str();
  cmd->add_option("--threads,-t", f.threads, "threads (0: all)")->capture_default_str();
  cmd->add_flag("--json", f.json, "print one JSON object instead of text");
  cmd->add_option("--device", f.device,
                  "where the model runs: cpu, or cuda (a build with CUDA and a GPU; f16 and "
                  "PolarQuant caches)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_option("--sink", f.sink, "first tokens of a sequence kept in full precision")
      ->capture_default_str();
  cmd->add_option("--recent", f.recent, "most recent tokens kept in full precision")
      ->capture_default_str();
  cmd->add_option("--key-codebooks", f.key_codebooks,
                  "PQCB file (train-codebooks) with the key codec's angle codebooks (default: "
                  "analytic)");
  cmd->add_option("--value-codebooks", f.value_codebooks, "the same for the value codec");
  cmd->add_option("--codebooks", f.codebooks,
                  "PolarQuant angle codebooks: analytic, or online (fitted per sequence and layer, "
                  "keys and values apart, to the prompt's own angles at prefill; CPU only)")
      ->check(CLI::IsMember({"analytic", "online"}))
      ->capture_default_str();
  cmd->add_flag("!--no-center-keys", f.center_keys,
                "store keys as they are (by default the cache subtracts their mean, which leaves "
                "attention exact and lowers a lossy codec's error)");
  CLI::Option* rope_on = cmd->add_flag(
      "--rope-center", f.rope_center,
      "center keys on their mean taken before RoPE, rotated to each page's position (attention "
      "stays exact; lowers a lossy key codec's error most at long context; Gemma 3: each "
      "layer's own RoPE base). On by default (CPU and CUDA); --no-rope-center turns it off");
  cmd->add_flag("--no-rope-center", f.no_rope_center, "center keys on one mean (see --rope-center)")
      ->excludes(rope_on);
}

// After parsing: a pair name gives -ctk its key codec and -ctv its value codec; codebook files
// need PolarQuant codecs. (llama.cpp's single-dash -ctk/-ctv reach CLI11 as --ctk/--ctv:
// main.cpp rewrites them, since CLI11 would read "-ctk" as "-c tk".)
inline void finish_codec_flags(ModelFlags& f) {
  // A pair name gives -ctk its key codec and -ctv its value codec ("-ctk kivi4 -ctv kivi4").
  f.key_codec = codec_pair(f.key_codec).key;
  f.value_codec = codec_pair(f.value_codec).value;
  if (!f.key_codebooks.empty() && !is_polar_codec_name(f.key_codec)) {
    throw_invalid("--key-codebooks needs a PolarQuant key codec, not '" + f.key_codec + "'");
  }
  if (!f.value_codebooks.empty() && !is_polar_codec_name(f.value_codec)) {
    throw_invalid("--value-codebooks needs a PolarQuant value codec, not '" + f.value_codec + "'");
  }
  if (f.codebooks == "online" && (!f.key_codebooks.empty() || !f.value_codebooks.empty())) {
    throw_invalid(
        "--codebooks online fits the codebooks at prefill; it cannot be combined with "
        "--key-codebooks / --value-codebooks (those are the offline codebooks)");
  }
}

// The runtime options every model command shares (codecs, codebooks, windows, threads, key
// centering, device).
// Builds every codec a command will use (its -ctk/-ctv and any --codecs list) for the model's head
// dimension, so that an unknown name or one that does not suit the model stops the command before
// any work starts, naming the entry.
inline void check_codecs(const ModelFlags& f, const std::vector<eval::CodecChoice>& list,
                         int head_dim) {
  std::vector<eval::CodecChoice> all = list;
  all.push_back({f.key_codec, f.value_codec});
  for (size_t i = 0; i < all.size(); ++i) {
    for (const std::string* name : {&all[i].key_codec, &all[i].value_codec}) {
      try {
        (void)make_codec(*name, head_dim);
      } catch (const Error& e) {
        throw_invalid((i + 1 < all.size() ? "--codecs entry " + std::to_string(i + 1) + " ('" +
                                                all[i].label() + "')"
                                          : std::string("-ctk/-ctv")) +
                      ": " + e.what());
      }
    }
  }
}

inline model::RuntimeOptions runtime_options(const ModelFlags& f) {
  model::RuntimeOptions rt;
  rt.key_codec = f.key_codec;
  rt.value_codec = f.value_codec;
  rt.key_codebooks = f.key_codebooks;
  rt.value_codebooks = f.value_codebooks;
  rt.online_codebooks = f.codebooks == "online";
  rt.sink_tokens = f.sink;
  rt.recent_tokens = f.recent;
  rt.n_threads = f.threads;
  rt.center_keys = f.center_keys;
  rt.rope_center_keys = f.rope_center || !f.no_rope_center;
  rt.device = f.device;
  return rt;
}

inline std::string read_text_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) throw_io("cannot open text file '" + path + "'");
  std::string text;
  char buf[1 << 16];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
  std::fclose(f);
  return text;
}

// Tokenizes only as much of the text as `needed` tokens take (BPE on a whole novel costs seconds),
// growing the prefix until enough tokens come out or the text ends.
inline std::vector<int> tokenize_prefix(const model::Tokenizer& tok, const std::string& text,
                                        size_t needed) {
  size_t chars = needed * 6 + 64;
  while (true) {
    const bool whole = chars >= text.size();
    std::vector<int> ids =
        tok.encode(whole ? std::string_view(text) : std::string_view(text).substr(0, chars),
                   tok.wants_bos(), false);
    if (whole || ids.size() > needed) {
      if (!whole && ids.size() > needed) ids.resize(needed);  // drop the possibly cut last word
      return ids;
    }
    chars *= 2;
  }
}

inline std::vector<std::string> split_list(const std::string& list) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= list.size()) {
    const size_t comma = std::min(list.find(',', start), list.size());
    if (comma > start) out.push_back(list.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

// One entry of a --codecs list: "K/V" names the key and value codecs; a pair name ("kivi4") its
// two codecs; any other name is used for both.
inline eval::CodecChoice parse_codec_choice(const std::string& item) {
  const CodecPair p = codec_pair(item);
  return {p.key, p.value};
}

struct LoadedModel {
  std::unique_ptr<model::LlamaModel> model;
  std::unique_ptr<model::Tokenizer> tokenizer;
};

inline LoadedModel load_model(const ModelFlags& f) {
  LoadedModel m;
  m.model = std::make_unique<model::LlamaModel>(model::LlamaModel::load(f.model));
  m.tokenizer = model::load_tokenizer(*m.model, f.tokenizer);
  return m;
}

// Progress on stderr (so it never mixes with --json output on stdout): a rewritten line on a
// terminal, a line per 10% otherwise.
class Progress {
 public:
  explicit Progress(std::string label) : label_(std::move(label)), tty_(isatty(2) != 0) {}
  void update(size_t done, size_t total) {
    total_ = total;
    if (total_ == 0) return;
    const int pct = static_cast<int>(100 * done / total_);
    if (!tty_ && pct / 10 == last_ / 10 && done != total_) return;
    if (tty_ && pct == last_ && done != total_) return;
    last_ = pct;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    std::fprintf(stderr, "%s%s: %zu/%zu (%d%%) %.1fs%s", tty_ ? "\r" : "", label_.c_str(), done,
                 total_, pct, s, tty_ ? "" : "\n");
    if (tty_ && done == total_) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }

 private:
  std::string label_;
  size_t total_ = 0;
  bool tty_;
  int last_ = -1;
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

}  // namespace polarquant::cli
