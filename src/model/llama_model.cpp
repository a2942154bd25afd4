#include "model/llama_model.h"

#include "model/gguf_weights.h"

#include <polarquant/error.h>

#include <cstring>
#include <limits>

namespace polarquant::model {

namespace detail {

int checked_int(uint64_t v, const std::string& key, const std::string& label, int64_t max_value) {
  if (v == 0 || v > static_cast<uint64_t>(max_value)) {
    throw_format("model '" + label + "': " + key + " = " + std::to_string(v) + " is outside 1.." +
                 std::to_string(max_value));
  }
  return static_cast<int>(v);
}

std::vector<float> tensor_to_floats(const TensorInfo& t) {
  std::vector<float> out(static_cast<size_t>(t.n_elements()));
  dequantize_row_ref(t.type, t.data, out.data(), t.n_elements());
  return out;
}

// Checks a GGUF tensor's shape (ggml order: dims[0] = row length) and returns it as a matrix view.
WeightMatrix matrix_from(const GgufFile& f, const std::string& name, int64_t cols, int64_t rows) {
  const TensorInfo& t = f.tensor(name);
  if (t.dims.size() != 2 || t.dims[0] != cols || t.dims[1] != rows) {
    std::string got;
    for (int64_t d : t.dims) got += (got.empty() ? "" : ", ") + std::to_string(d);
    throw_format("GGUF '" + f.label() + "': tensor '" + name + "' has shape [" + got +
                 "], expected [" + std::to_string(cols) + ", " + std::to_string(rows) + "]");
  }
  return make_weight_matrix(t.type, t.data, rows, cols);
}

WeightMatrix token_embedding_from(const GgufFile& f, int dim, int* vocab) {
  const TensorInfo& emb = f.tensor("token_embd.weight");
  if (emb.dims.size() != 2 || emb.dims[0] != dim || emb.dims[1] > (1 << 24)) {
    throw_format("GGUF '" + f.label() + "': token_embd.weight should be [" + std::to_string(dim) +
                 ", vocab]");
  }
  *vocab = static_cast<int>(emb.dims[1]);
  return make_weight_matrix(emb.type, emb.data, *vocab, dim);
}

std::vector<float> vector_from(const GgufFile& f, const std::string& name, int64_t n) {
  const TensorInfo& t = f.tensor(name);
  if (t.dims.size() != 1 || t.dims[0] != n) {
    throw_format("GGUF '" + f.label() + "': tensor '" + name + "' should be a vector of " +
                 std::to_string(n) + " values");
  }
  return tensor_to_floats(t);
}

}  // namespace detail

using detail::checked_int;
using detail::matrix_from;
using detail::vector_from;

const char* architecture_name(Architecture arch) {
  return arch == Architecture::kGemma3 ? "gemma3" : "llama";
}

const std::vector<std::string>& model_shape_names() {
  static const std::vector<std::string> names = {"llama3-8b", "smollm2-135m"};
  return names;
}

LlamaConfig model_shape(const std::string& name) {
  LlamaConfig c;
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
  } else if (name == "smollm2-135m") {
    c.dim = 576;
    c.hidden_dim = 1536;
    c.n_layers = 30;
    c.n_heads = 9;
    c.n_kv_heads = 3;
    c.head_dim = 64;
    c.vocab_size = 49152;
    c.context_length = 8192;
    c.rope_theta = 100000.0f;
  } else {
    throw_invalid("unknown model shape '" + name + "' (known: llama3-8b, smollm2-135m)");
  }
  return c;
}

LlamaModel LlamaModel::load(const std::string& path) {
  MappedFile probe(path);
  const bool is_gguf = probe.size() >= 4 && std::memcmp(probe.data(), "GGUF", 4) == 0;
  return is_gguf ? load_gguf(path) : load_llama2c(path);
}

LlamaModel LlamaModel::load_gguf(const std::string& path) {
  auto file = std::make_shared<GgufFile>(GgufFile::open(path));
  LlamaModel m = from_gguf(*file);
  m.gguf_ = std::move(file);
  return m;
}

LlamaModel LlamaModel::from_gguf(const GgufFile& f) {
  const std::string arch = f.get_string("general.architecture");
  if (arch == "gemma3") return from_gguf_gemma3(f);
  if (arch != "llama") {
    throw Error(ErrorKind::kUnsupported, "GGUF '" + f.label() + "': architecture '" + arch +
                                             "' is not supported (expected 'llama' or 'gemma3')");
  }
  const std::string& label = f.label();
  constexpr int64_t kMaxDim = 1 << 16;
  LlamaConfig c;
  c.dim =
      checked_int(f.get_uint("llama.embedding_length"), "llama.embedding_length", label, kMaxDim);
  c.n_layers = checked_int(f.get_uint("llama.block_count"), "llama.block_count", label, 1024);
  c.hidden_dim = checked_int(f.get_uint("llama.feed_forward_length"), "llama.feed_forward_length",
                             label, 1 << 18);
  c.n_heads = checked_int(f.get_uint("llama.attention.head_count"), "llama.attention.head_count",
                          label, 1024);
  c.n_kv_heads = f.has("llama.attention.head_count_kv")
                     ? checked_int(f.get_uint("llama.attention.head_count_kv"),
                                   "llama.attention.head_count_kv", label, 1024)
                     : c.n_heads;
  c.context_length =
      checked_int(f.get_uint("llama.context_length"), "llama.context_length", label, 1 << 24);
  if (c.dim % c.n_heads != 0 || c.n_heads % c.n_kv_heads != 0) {
    throw_format("GGUF '" + label + "': embedding_length " + std::to_string(c.dim) +
                 ", head_count " + std::to_string(c.n_heads) + " and head_count_kv " +
                 std::to_string(c.n_kv_heads) + " do not divide evenly");
  }
  c.head_dim = c.dim / c.n_heads;
  if (c.head_dim % 2 != 0)
    throw_format("GGUF '" + label + "': head dimension " + std::to_string(c.head_dim) + " is odd");
  if (f.has("llama.rope.dimension_count") &&
      f.get_uint("llama.rope.dimension_count") != static_cast<uint64_t>(c.head_dim)) {
    throw Error(ErrorKind::kUnsupported,
                "GGUF '" + label + "': partial rotary embedding (rope.dimension_count " +
                    std::to_string(f.get_uint("llama.rope.dimension_count")) + " != head dim " +
                    std::to_string(c.head_dim) + ") is not supported");
  }
  c.rms_eps = static_cast<float>(f.get_float("llama.attention.layer_norm_rms_epsilon"));
  c.rope_theta = f.has("llama.rope.freq_base")
                     ? static_cast<float>(f.get_float("llama.rope.freq_base"))
                     : 10000.0f;
  if (!(c.rms_eps > 0.0f && c.rms_eps < 1.0f) || !(c.rope_theta > 1.0f && c.rope_theta < 1e9f)) {
    throw_format("GGUF '" + label + "': rms epsilon or rope.freq_base is out of range");
  }
  LlamaModel m;
  m.format_ = "gguf";
  m.token_embedding_ = detail::token_embedding_from(f, c.dim, &c.vocab_size);
  m.config_ = c;
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    LayerWeights w;
    w.attn_norm = vector_from(f, p + "attn_norm.weight", c.dim);
    w.wq = matrix_from(f, p + "attn_q.weight", c.dim, c.q_dim());
    w.wk = matrix_from(f, p + "attn_k.weight", c.dim, c.kv_dim());
    w.wv = matrix_from(f, p + "attn_v.weight", c.dim, c.kv_dim());
    w.wo = matrix_from(f, p + "attn_output.weight", c.q_dim(), c.dim);
    w.ffn_norm = vector_from(f, p + "ffn_norm.weight", c.dim);
    w.w_gate = matrix_from(f, p + "ffn_gate.weight", c.dim, c.hidden_dim);
    w.w_up = matrix_from(f, p + "ffn_up.weight", c.dim, c.hidden_dim);
    w.w_down = matrix_from(f, p + "ffn_down.weight", c.hidden_dim, c.dim);
    m.layers_.push_back(std::move(w));
  }
  m.final_norm_ = vector_from(f, "output_norm.weight", c.dim);
  if (f.find_tensor("output.weight") != nullptr) {
    m.output_ = matrix_from(f, "output.weight", c.dim, c.vocab_size);
  } else {
    m.output_ = m.token_embedding_;  // tied head
    m.tied_output_ = true;
  }
  return m;
}

LlamaModel LlamaModel::load_llama2c(const std::string& path) {
  auto file = std::make_shared<MappedFile>(path);
  LlamaModel m = parse_llama2c(file->data(), file->size(), path);
  m.file_ = std::move(file);
  return m;
}

LlamaModel LlamaModel::parse_llama2c(const uint8_t* data, size_t size, const std::string& label) {
  constexpr size_t kHeader = 7 * sizeof(int32_t);
  if (size < kHeader) {
    throw_format("llama2.c checkpoint '" + label + "': " + std::to_string(size) +
                 " bytes is shorter than the 28-byte header");
  }
  int32_t h[7];
  std::memcpy(h, data, kHeader);
  const char* names[7] = {"dim",        "hidden_dim", "n_layers", "n_heads",
                          "n_kv_heads", "vocab_size", "seq_len"};
  const bool shared = h[5] > 0;
  // A negative vocab_size flags a separate classifier; INT32_MIN has no positive twin and is
  // refused.
  if (h[5] < 0) h[5] = h[5] == std::numeric_limits<int32_t>::min() ? 0 : -h[5];
  const int32_t limits[7] = {1 << 16, 1 << 18, 1024, 1024, 1024, 1 << 24, 1 << 24};
  for (int i = 0; i < 7; ++i) {
    if (h[i] <= 0 || h[i] > limits[i]) {
      throw_format("llama2.c checkpoint '" + label + "': header field " + names[i] +
                   " (byte offset " + std::to_string(4 * i) + ") = " + std::to_string(h[i]) +
                   " is outside 1.." + std::to_string(limits[i]));
    }
  }
  LlamaConfig c;
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  c.vocab_size = h[5];
  c.context_length = h[6];
  if (c.dim % c.n_heads != 0 || c.n_heads % c.n_kv_heads != 0 || (c.dim / c.n_heads) % 2 != 0) {
    throw_format("llama2.c checkpoint '" + label + "': dim " + std::to_string(c.dim) +
                 ", n_heads " + std::to_string(c.n_heads) + ", n_kv_heads " +
                 std::to_string(c.n_kv_heads) +
                 " do not give an even head dimension shared by the KV heads");
  }
  c.head_dim = c.dim / c.n_heads;

  const uint64_t d = c.dim, hd = c.hidden_dim, L = c.n_layers, kv = c.kv_dim(), V = c.vocab_size;
  size_t offset = kHeader;
  // Hands out the next tensor of n floats, checking it lies inside the file.
  auto take = [&](uint64_t n, const char* what) {
    if (n > (size - offset) / sizeof(float)) {
      throw_format("llama2.c checkpoint '" + label + "': tensor " + what + " (" +
                   std::to_string(n) + " floats at byte offset " + std::to_string(offset) +
                   ") extends past the end of the " + std::to_string(size) + "-byte file");
    }
    const uint8_t* p = data + offset;
    offset += static_cast<size_t>(n) * sizeof(float);
    return p;
  };
  auto floats = [](const uint8_t* p, uint64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    std::memcpy(v.data(), p, static_cast<size_t>(n) * sizeof(float));
    return v;
  };
  LlamaModel m;
  m.format_ = "llama2c";
  const uint8_t* emb = take(V * d, "token_embedding");
  const uint8_t* rms_att = take(L * d, "rms_att");
  const uint8_t* wq = take(L * d * d, "wq");
  const uint8_t* wk = take(L * kv * d, "wk");
  const uint8_t* wv = take(L * kv * d, "wv");
  const uint8_t* wo = take(L * d * d, "wo");
  const uint8_t* rms_ffn = take(L * d, "rms_ffn");
  const uint8_t* w1 = take(L * hd * d, "w1");
  const uint8_t* w2 = take(L * d * hd, "w2");
  const uint8_t* w3 = take(L * hd * d, "w3");
  const uint8_t* rms_final = take(d, "rms_final");
  take(static_cast<uint64_t>(c.context_length) * c.head_dim,
       "freq_cis");  // unused, RoPE is computed
  const uint8_t* wcls = shared ? emb : take(V * d, "wcls");

  m.token_embedding_ = make_weight_matrix(GgmlType::kF32, emb, V, d);
  for (uint64_t l = 0; l < L; ++l) {
    LayerWeights w;
    w.attn_norm = floats(rms_att + l * d * 4, d);
    w.wq = make_weight_matrix(GgmlType::kF32, wq + l * d * d * 4, d, d);
    w.wk = make_weight_matrix(GgmlType::kF32, wk + l * kv * d * 4, kv, d);
    w.wv = make_weight_matrix(GgmlType::kF32, wv + l * kv * d * 4, kv, d);
    w.wo = make_weight_matrix(GgmlType::kF32, wo + l * d * d * 4, d, d);
    w.ffn_norm = floats(rms_ffn + l * d * 4, d);
    w.w_gate = make_weight_matrix(GgmlType::kF32, w1 + l * hd * d * 4, hd, d);
    w.w_down = make_weight_matrix(GgmlType::kF32, w2 + l * d * hd * 4, d, hd);
    w.w_up = make_weight_matrix(GgmlType::kF32, w3 + l * hd * d * 4, hd, d);
    m.layers_.push_back(std::move(w));
  }
  m.final_norm_ = floats(rms_final, d);
  m.output_ = make_weight_matrix(GgmlType::kF32, wcls, V, d);
  m.tied_output_ = shared;
  m.config_ = c;
  return m;
}

}  // namespace polarquant::model
