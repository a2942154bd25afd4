// The model runtime's interface, whatever runs it: the CPU Transformer (src/model/transformer.h) or
// the CUDA runtime (src/cuda_model/cuda_transformer.h). Generation, perplexity and NIAH are written
// against Runtime, so `--device cuda` changes where the model runs and nothing else.
#pragma once

#include "model/llama_model.h"

#include <polarquant/codec.h>
#include <polarquant/kv_cache.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

namespace polarquant::model {

struct RuntimeOptions {
  std::string key_codec = "f16";
  std::string value_codec = "f16";
  std::string key_codebooks;    // KvCacheOptions::key_codebooks (PQCB file; empty: analytic)
  std::string value_codebooks;  // KvCacheOptions::value_codebooks
  // KvCacheOptions::online_codebooks for the PolarQuant codecs (the paper's online codebooks; the
  // CPU runtime only: the CUDA runtime refuses it with Unsupported).
  bool online_codebooks = false;
  uint64_t codec_seed = kDefaultSeed;
  int sink_tokens = 0;      // first tokens kept in full precision (see KvCacheOptions)
  int recent_tokens = 0;    // most recent tokens kept in full precision
  bool center_keys = true;  // KvCacheOptions::center_keys: exact, and a lossy codec errs less
  // With center_keys: the mean taken before RoPE and rotated per page (KvCacheOptions::
  // key_rope_inv_freq, the model's RoPE frequencies; the CUDA runtime's rope_shift.h). Gemma 3
  // gets one set per layer (its local layers' RoPE base or the global one). Ignored without
  // center_keys. Off by default here; the CLI turns it on (tools/cli/model_options.h).
  bool rope_center_keys = false;
  // KvCacheOptions::quantize_generated: false keeps tokens appended after the prompt (the first
  // append of a sequence) in full precision, as the paper's LongBench runs do.
  bool quantize_generated = true;
  int n_threads = 0;        // 0: OpenMP's default
  bool use_fused = true;    // false: decode-then-attend reference attention
  int prefill_chunk = 256;  // tokens per forward step during prefill (bounds activation memory)
  // Where the model runs: "cpu" or "cuda" (make_runtime). The CUDA runtime sizes its page pool up
  // front for max_sequences sequences of max_context tokens (0: the model's context).
  std::string device = "cpu";
  int max_sequences = 1;
  size_t max_context = 0;
  // CUDA runtime: plan and allocate within this many bytes of GPU memory (weights, scratch and
  // cache together; 0: all of the GPU's free memory), as a server sharing the GPU would.
  size_t gpu_memory_limit = 0;
};

class Runtime {
 public:
  virtual ~Runtime() = default;

  virtual const LlamaConfig& config() const = 0;
  virtual const RuntimeOptions& options() const = 0;
  virtual std::string device_name() const = 0;  // "cpu", or the GPU's name

  virtual SequenceId add_sequence() = 0;
  // Frees the sequence's cache; later use of the id throws State.
  virtual void free_sequence(SequenceId seq) = 0;
  virtual size_t position(SequenceId seq) const = 0;

  // Runs n tokens of a sequence from its current position, storing their K/V in the cache. With
  // all_logits, logits gets n x vocab values (one row per token), else vocab values for the last
  // token. Throws InvalidArgument for an out-of-vocabulary token or when the sequence would exceed
  // the model's context.
  virtual void forward(SequenceId seq, const int* tokens, size_t n, std::vector<float>& logits,
                       bool all_logits) = 0;
  // One token for each of `batch` distinct sequences (batched decode): logits gets batch x vocab
  // values. The default runs forward() once per sequence.
  virtual void forward_batch(const SequenceId* seqs, const int* tokens, size_t batch,
                             std::vector<float>& logits);

  // Bytes the KV cache holds now (and what fp16 would need for the same tokens).
  virtual KvMemoryStats memory() const = 0;
};

// Builds the runtime of options.device. "cpu" is always there; "cuda" once a build with CUDA has
// called register_runtime("cuda", ...) (polarquant::cuda::register_cuda_runtime). Throws
// Unsupported naming the devices this build has.
// Throws InvalidArgument for no tokens, a token outside the vocabulary, or position + n past the
// model's context: the checks every Runtime::forward makes before any work.
void check_forward_input(const LlamaConfig& config, size_t position, const int* tokens, size_t n);

using RuntimeFactory = std::unique_ptr<Runtime> (*)(const LlamaModel&, const RuntimeOptions&);
void register_runtime(const std::string& device, RuntimeFactory factory);
std::unique_ptr<Runtime> make_runtime(const LlamaModel& model, const RuntimeOptions& options);

}  // namespace polarquant::model
