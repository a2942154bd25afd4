#include "model/runtime.h"

#include <polarquant/error.h>

#include "model/transformer.h"

#include <map>
#include <mutex>

namespace polarquant::model {

namespace {

struct Registry {
  std::mutex mutex;
  std::map<std::string, RuntimeFactory> factories;
};

Registry& registry() {
  static Registry r;
  return r;
}

std::unique_ptr<Runtime> make_cpu(const LlamaModel& model, const RuntimeOptions& options) {
  return std::make_unique<Transformer>(model, options);
}

}  // namespace

void Runtime::forward_batch(const SequenceId* seqs, const int* tokens, size_t batch,
                            std::vector<float>& logits) {
  const size_t vocab = static_cast<size_t>(config().vocab_size);
  logits.resize(batch * vocab);
  std::vector<float> one;
  for (size_t b = 0; b < batch; ++b) {
    forward(seqs[b], tokens + b, 1, one, false);
    std::copy(one.begin(), one.end(), logits.begin() + static_cast<std::ptrdiff_t>(b * vocab));
  }
}

void check_forward_input(const LlamaConfig& c, size_t position, const int* tokens, size_t n) {
  if (n == 0) throw_invalid("forward needs at least one token");
  for (size_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size) {
      throw_invalid("token " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                    " is outside the vocabulary of " + std::to_string(c.vocab_size));
    }
  }
  if (position + n > static_cast<size_t>(c.context_length)) {
    throw_invalid("sequence of " + std::to_string(position + n) +
                  " tokens exceeds the model's context of " + std::to_string(c.context_length));
  }
}

void register_runtime(const std::string& device, RuntimeFactory factory) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.factories[device] = factory;
}

std::unique_ptr<Runtime> make_runtime(const LlamaModel& model, const RuntimeOptions& options) {
  if (options.device == "cpu") return make_cpu(model, options);
  RuntimeFactory factory = nullptr;
  std::string known = "cpu";
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    const auto it = r.factories.find(options.device);
    if (it != r.factories.end()) factory = it->second;
    for (const auto& [name, f] : r.factories) known += ", " + name;
  }
  if (factory == nullptr) {
    throw Error(ErrorKind::kUnsupported,
                "device '" + options.device +
                    "' is not available in this build (devices: " + known +
                    (options.device == "cuda" ? "; rebuild where nvcc is found for CUDA)" : ")"));
  }
  // The device runtimes implement the llama forward pass only.
  if (model.config().arch != Architecture::kLlama) {
    throw Error(ErrorKind::kUnsupported, std::string("device '") + options.device +
                                             "' runs llama-architecture models only, not '" +
                                             architecture_name(model.config().arch) +
                                             "'; use --device cpu");
  }
  return factory(model, options);
}

}  // namespace polarquant::model
