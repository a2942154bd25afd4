// Llama-architecture weights (RMSNorm, RoPE, GQA attention, SwiGLU MLP, tied or separate output
// head) loaded from a GGUF file or a llama2.c checkpoint, and Gemma 3 weights from a GGUF file
// (gemma3_model.cpp: the same blocks plus per-head Q/K norms, post-attention and post-FFN norms,
// a GELU-gated MLP and sliding-window layers). Weight matrices are views into the file's memory
// map, which the model keeps alive; norms are copied to floats.
#pragma once

#include "model/gguf.h"
#include "model/mapped_file.h"
#include "model/matmul.h"

#include <memory>
#include <string>
#include <vector>

namespace polarquant::model {

enum class Architecture { kLlama, kGemma3 };

struct LlamaConfig {
  Architecture arch = Architecture::kLlama;
  int dim = 0;         // embedding width
  int hidden_dim = 0;  // MLP width
  int n_layers = 0;
  int n_heads = 0;     // query heads
  int n_kv_heads = 0;  // key/value heads (GQA when fewer than n_heads)
  int head_dim = 0;
  int vocab_size = 0;
  int context_length = 0;  // trained context
  float rms_eps = 1e-5f;
  float rope_theta = 10000.0f;
  // Gemma 3 only (the llama forward pass ignores them).
  float embedding_scale = 1.0f;       // token embeddings are multiplied by this (sqrt(dim))
  float attention_scale = 0.0f;       // softmax scale of q.k; 0: 1/sqrt(head_dim)
  int sliding_window = 0;             // keys a local layer's query sees (0: all layers global)
  int sliding_window_pattern = 0;     // layer l is local unless (l + 1) % pattern == 0
  float rope_theta_local = 10000.0f;  // RoPE base of the local layers
  float final_logit_softcap = 0.0f;   // logits = cap * tanh(logits / cap); 0: none
  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
  bool is_local_layer(int layer) const {
    return sliding_window > 0 && sliding_window_pattern > 0 &&
           (layer + 1) % sliding_window_pattern != 0;
  }
};

const char* architecture_name(Architecture arch);  // "llama", "gemma3"

// Shapes of known models, for random-weight speed runs (bench-serve --shape): "llama3-8b",
// "smollm2-135m". Throws InvalidArgument for another name.
const std::vector<std::string>& model_shape_names();
LlamaConfig model_shape(const std::string& name);

struct LayerWeights {
  std::vector<float> attn_norm;
  WeightMatrix wq, wk, wv, wo;  // [q_dim x dim], [kv_dim x dim] x2, [dim x q_dim]
  std::vector<float> ffn_norm;
  WeightMatrix w_gate, w_up;  // [hidden x dim]
  WeightMatrix w_down;        // [dim x hidden]
  // Gemma 3 only (empty for llama): RMSNorm weights of each query/key head (head_dim), and of the
  // attention and MLP outputs before they join the residual stream (dim).
  std::vector<float> q_norm, k_norm, post_attn_norm, post_ffn_norm;
};

class LlamaModel {
 public:
  // Picks the format from the file's first bytes ("GGUF" or a llama2.c header).
  static LlamaModel load(const std::string& path);
  static LlamaModel load_gguf(const std::string& path);
  static LlamaModel load_llama2c(const std::string& path);
  // From buffers the caller keeps alive (tests, fuzzing). Throw Format naming the field.
  static LlamaModel from_gguf(const GgufFile& file);
  static LlamaModel parse_llama2c(const uint8_t* data, size_t size, const std::string& label);
  // The gemma3 half of from_gguf (gemma3_model.cpp).
  static LlamaModel from_gguf_gemma3(const GgufFile& file);

  const LlamaConfig& config() const { return config_; }
  const WeightMatrix& token_embedding() const { return token_embedding_; }
  const std::vector<LayerWeights>& layers() const { return layers_; }
  const std::vector<float>& final_norm() const { return final_norm_; }
  const WeightMatrix& output() const { return output_; }
  bool tied_output() const { return tied_output_; }
  const std::string& format() const { return format_; }  // "gguf" or "llama2c"
  // The GGUF file the model came from (tokenizer metadata), or null for llama2.c.
  const GgufFile* gguf() const { return gguf_.get(); }

 private:
  LlamaConfig config_;
  WeightMatrix token_embedding_;
  std::vector<LayerWeights> layers_;
  std::vector<float> final_norm_;
  WeightMatrix output_;
  bool tied_output_ = false;
  std::string format_;
  std::shared_ptr<MappedFile> file_;
  std::shared_ptr<GgufFile> gguf_;
};

}  // namespace polarquant::model
