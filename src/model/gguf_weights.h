// Shared helpers of the GGUF model loaders (llama_model.cpp, gemma3_model.cpp): checked metadata
// integers and tensors fetched with their expected shapes. All throw Format naming the file, the
// key or tensor, and what was expected.
#pragma once

#include "model/gguf.h"
#include "model/matmul.h"

#include <cstdint>
#include <string>
#include <vector>

namespace polarquant::model::detail {

// v as an int, refusing 0 and values above max_value.
int checked_int(uint64_t v, const std::string& key, const std::string& label, int64_t max_value);
// A tensor decoded to floats (norm weights).
std::vector<float> tensor_to_floats(const TensorInfo& t);
// A 2-D tensor of ggml shape [cols, rows] as a matrix view into the file.
WeightMatrix matrix_from(const GgufFile& f, const std::string& name, int64_t cols, int64_t rows);
// token_embd.weight ([dim, vocab], vocab up to 2^24) as a matrix view; its vocabulary size in
// *vocab.
WeightMatrix token_embedding_from(const GgufFile& f, int dim, int* vocab);
// A 1-D tensor of n values, decoded to floats.
std::vector<float> vector_from(const GgufFile& f, const std::string& name, int64_t n);

}  // namespace polarquant::model::detail
