#include "model/prompt_cache.h"

#include <polarquant/error.h>

#include <algorithm>
#include <filesystem>

#include "core/bytes.h"

namespace polarquant::model {

namespace {

struct Hasher {
  uint64_t h = kFnv64Offset;
  void bytes(const void* p, size_t n) { h = fnv1a64(h, p, n); }
  void u64(uint64_t v) { bytes(&v, sizeof v); }
  void str(const std::string& s) {
    u64(s.size());
    bytes(s.data(), s.size());
  }
  void value(const GgufValue& v) {
    u64(static_cast<uint64_t>(v.type));
    u64(v.u);
    u64(static_cast<uint64_t>(v.i));
    bytes(&v.f, sizeof v.f);
    str(v.s);
    u64(v.elements.size());
    for (const GgufValue& e : v.elements) value(e);
  }
  void floats(const std::vector<float>& x) {
    u64(x.size());
    bytes(x.data(), x.size() * sizeof(float));
  }
  // Type, shape and the first and last 4 KiB of a weight matrix (a fingerprint, not all of it).
  void weight(const WeightMatrix& w) {
    u64(static_cast<uint64_t>(w.type));
    u64(static_cast<uint64_t>(w.rows));
    u64(static_cast<uint64_t>(w.cols));
    const size_t total = static_cast<size_t>(w.rows) * w.row_stride;
    const size_t n = std::min<size_t>(total, 4096);
    if (w.data == nullptr) return;
    bytes(w.data, n);
    bytes(w.data + total - n, n);
  }
};

}  // namespace

CacheOwner cache_owner(const LlamaModel& model, const Tokenizer& tokenizer) {
  const LlamaConfig& c = model.config();
  CacheOwner owner;
  std::string arch = "llama";
  if (model.gguf() != nullptr && model.gguf()->has("general.architecture")) {
    arch = model.gguf()->get_string("general.architecture");
  }
  owner.architecture = arch + "/" + model.format();
  owner.n_layers = static_cast<uint32_t>(c.n_layers);
  owner.n_heads = static_cast<uint32_t>(c.n_heads);
  owner.n_kv_heads = static_cast<uint32_t>(c.n_kv_heads);
  owner.head_dim = static_cast<uint32_t>(c.head_dim);
  owner.vocab_size = static_cast<uint32_t>(c.vocab_size);

  Hasher h;
  h.str(owner.architecture);
  for (int v : {c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size,
                c.context_length}) {
    h.u64(static_cast<uint64_t>(v));
  }
  h.bytes(&c.rms_eps, sizeof c.rms_eps);
  h.bytes(&c.rope_theta, sizeof c.rope_theta);
  h.u64(static_cast<uint64_t>(tokenizer.bos()));
  h.u64(static_cast<uint64_t>(tokenizer.eos()));
  h.u64(static_cast<uint64_t>(tokenizer.vocab_size()));
  for (int id = 0; id < tokenizer.vocab_size(); ++id) h.str(tokenizer.decode(id, -1));
  if (model.gguf() != nullptr) {
    for (const auto& [key, value] : model.gguf()->metadata()) {
      h.str(key);
      h.value(value);
    }
  }
  h.weight(model.token_embedding());
  for (const LayerWeights& w : model.layers()) {
    h.floats(w.attn_norm);
    h.floats(w.ffn_norm);
    for (const WeightMatrix* m : {&w.wq, &w.wk, &w.wv, &w.wo, &w.w_gate, &w.w_up, &w.w_down}) {
      h.weight(*m);
    }
  }
  h.floats(model.final_norm());
  h.weight(model.output());
  owner.model_hash = h.h;
  return owner;
}

PromptPrefill prefill_with_prompt_cache(Transformer& tf, const CacheOwner& owner,
                                        const std::vector<int>& prompt, const std::string& path,
                                        bool read_only) {
  if (prompt.empty()) throw_invalid("prompt cache: the prompt has no tokens");
  // A cache whose settings a file cannot hold (online codebooks) is refused here, before the prompt
  // is computed, not when the file is written.
  cache_file_header(tf.cache(), owner);
  PromptPrefill out;
  bool restored = false;
  std::error_code ec;
  if (std::filesystem::exists(path, ec)) {
    const std::vector<uint8_t> bytes = read_file_bytes(path);
    const CacheFile file = parse_cache_file(bytes.data(), bytes.size(), path);
    check_cache_file_matches(file, tf.cache(), owner);
    const std::vector<int32_t>& saved = file.header.tokens;
    const size_t common =
        std::mismatch(saved.begin(), saved.end(), prompt.begin(), prompt.end()).first -
        saved.begin();
    const bool prefix = common == saved.size() && !saved.empty() && saved.size() <= prompt.size();
    const bool whole = prefix && saved.size() == prompt.size();
    if (prefix && (!whole || !file.header.logits.empty())) {
      out.seq = restore_cache_sequence(tf.cache(), file);
      out.reused = saved.size();
      restored = true;
      if (whole) out.logits = file.header.logits;
      out.note = "restored " + std::to_string(saved.size()) + " of " +
                 std::to_string(prompt.size()) + " prompt tokens from '" + path + "'";
    } else {
      out.note = "'" + path + "' holds another prompt (" + std::to_string(saved.size()) +
                 " tokens, the first " + std::to_string(common) +
                 " shared with this one); computing the prompt";
    }
  } else {
    out.note = "'" + path + "' does not exist yet; computing the prompt";
  }
  if (!restored) out.seq = tf.add_sequence();
  if (out.reused < prompt.size()) {
    tf.forward(out.seq, prompt.data() + out.reused, prompt.size() - out.reused, out.logits, false);
  }
  if (!read_only && out.reused < prompt.size()) {
    save_cache_file(path, tf.cache(), out.seq, owner, prompt, out.logits);
    out.saved = true;
    out.note += "; saved " + std::to_string(prompt.size()) + " tokens to '" + path + "'";
  }
  return out;
}

}  // namespace polarquant::model
