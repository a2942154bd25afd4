// Helpers for the model-runtime tests: a small GGUF writer (to build valid and deliberately broken
// files in memory), the paths of the optional real models, and the tiny stories260K model.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "model/llama_model.h"
#include "model/tokenizer.h"

namespace polarquant::testing {

class GgufBuilder {
 public:
  explicit GgufBuilder(uint32_t alignment = 32) : alignment_(alignment) {}

  void kv_u32(const std::string& key, uint32_t v) {
    key_header(key, 4);
    put(v);
  }
  void kv_f32(const std::string& key, float v) {
    key_header(key, 6);
    put(v);
  }
  void kv_bool(const std::string& key, bool v) {
    key_header(key, 7);
    put(static_cast<uint8_t>(v));
  }
  void kv_string(const std::string& key, const std::string& v) {
    key_header(key, 8);
    str(kv_, v);
  }
  void kv_strings(const std::string& key, const std::vector<std::string>& v) {
    key_header(key, 9);
    put(uint32_t{8});
    put(static_cast<uint64_t>(v.size()));
    for (const auto& s : v) str(kv_, s);
  }
  void kv_i32s(const std::string& key, const std::vector<int32_t>& v) {
    key_header(key, 9);
    put(uint32_t{5});
    put(static_cast<uint64_t>(v.size()));
    for (int32_t x : v) put(x);
  }
  // A tensor with ggml dims (dims[0] contiguous) of the given type and raw bytes.
  void tensor(const std::string& name, std::vector<uint64_t> dims, uint32_t type,
              const std::vector<uint8_t>& bytes) {
    tensors_.push_back({name, std::move(dims), type, bytes});
  }

  std::vector<uint8_t> build() const {
    std::vector<uint8_t> out;
    append(out, uint32_t{0x46554747u});
    append(out, uint32_t{3});
    append(out, static_cast<uint64_t>(tensors_.size()));
    append(out, static_cast<uint64_t>(n_kv_));
    out.insert(out.end(), kv_.begin(), kv_.end());
    uint64_t offset = 0;
    for (const auto& t : tensors_) {
      str(out, t.name);
      append(out, static_cast<uint32_t>(t.dims.size()));
      for (uint64_t d : t.dims) append(out, d);
      append(out, t.type);
      append(out, offset);
      offset += (t.bytes.size() + alignment_ - 1) / alignment_ * alignment_;
    }
    while (out.size() % alignment_ != 0) out.push_back(0);
    for (size_t i = 0; i < tensors_.size(); ++i) {
      out.insert(out.end(), tensors_[i].bytes.begin(), tensors_[i].bytes.end());
      // Padding between tensors only: the file ends with the last tensor's last byte.
      while (i + 1 < tensors_.size() && out.size() % alignment_ != 0) out.push_back(0);
    }
    return out;
  }

 private:
  struct Tensor {
    std::string name;
    std::vector<uint64_t> dims;
    uint32_t type;
    std::vector<uint8_t> bytes;
  };
  template <typename T>
  static void append(std::vector<uint8_t>& out, T v) {
    uint8_t b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    out.insert(out.end(), b, b + sizeof(T));
  }
  template <typename T>
  void put(T v) {
    append(kv_, v);
  }
  static void str(std::vector<uint8_t>& out, const std::string& s) {
    append(out, static_cast<uint64_t>(s.size()));
    out.insert(out.end(), s.begin(), s.end());
  }
  void key_header(const std::string& key, uint32_t type) {
    str(kv_, key);
    put(type);
    ++n_kv_;
  }
  uint32_t alignment_;
  std::vector<uint8_t> kv_;
  size_t n_kv_ = 0;
  std::vector<Tensor> tensors_;
};

// ../shared beside the checkout, or $POLARQUANT_SHARED_DIR (the GPU machine has its own copy).
inline std::string shared_dir() {
  const char* env = std::getenv("POLARQUANT_SHARED_DIR");
  return env != nullptr && *env != '\0' ? env : POLARQUANT_SHARED_DIR;
}

// A file in the fetch script's cache (scripts/fetch_model.sh); empty when it is absent.
inline std::string cached_model_path(const std::string& name) {
  const char* env = std::getenv("POLARQUANT_MODEL_DIR");
  const char* home = std::getenv("HOME");
  std::string dir = env ? env : (home ? std::string(home) + "/.cache/polarquant/models" : "");
  std::string path = dir + "/" + name;
  return std::filesystem::exists(path) ? path : "";
}
inline std::string smollm2_path() {
  return cached_model_path("SmolLM2-135M-Instruct.Q4_1.gguf");
}
// scripts/fetch_model.sh gemma3-270m
inline std::string gemma3_path() {
  return cached_model_path("gemma-3-270m-q4_k_m.gguf");
}

// stories260K (llama2.c) and its 512-token tokenizer from ../shared/models; both null when absent
// (the tests that need them skip).
struct TinyModel {
  std::unique_ptr<model::LlamaModel> model;
  std::unique_ptr<model::Tokenizer> tokenizer;
};
inline TinyModel load_stories260k() {
  const std::string dir = shared_dir() + "/models/";
  TinyModel t;
  if (!std::filesystem::exists(dir + "stories260K.bin") ||
      !std::filesystem::exists(dir + "tok512.bin")) {
    return t;
  }
  t.model = std::make_unique<model::LlamaModel>(model::LlamaModel::load(dir + "stories260K.bin"));
  t.tokenizer = model::load_tokenizer(*t.model, dir + "tok512.bin");
  return t;
}

}  // namespace polarquant::testing
