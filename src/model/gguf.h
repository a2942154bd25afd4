// GGUF (version 3) reader: header, metadata key/values and tensor directory of a model file, with
// every count, length, offset and size checked against the bytes actually present. The tensor data
// is not copied: TensorInfo::data points into the caller's buffer (or the file's memory map).
// Spec: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
#pragma once

#include "model/ggml_types.h"
#include "model/mapped_file.h"

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace polarquant::model {

enum class GgufType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

// One metadata value. Scalars keep their exact value in the field matching their kind; arrays keep
// their element type and elements.
struct GgufValue {
  GgufType type = GgufType::kU8;
  uint64_t u = 0;                         // unsigned integers and bool
  int64_t i = 0;                          // signed integers
  double f = 0.0;                         // floats
  std::string s;                          // strings
  GgufType element_type = GgufType::kU8;  // arrays
  std::vector<GgufValue> elements;        // arrays

  bool is_integer() const;
  bool is_float() const { return type == GgufType::kF32 || type == GgufType::kF64; }
};

struct TensorInfo {
  std::string name;
  GgmlType type = GgmlType::kF32;
  std::vector<int64_t> dims;  // ggml order: dims[0] is the contiguous (row) length
  uint64_t offset = 0;        // from the start of the data section
  const uint8_t* data = nullptr;
  size_t n_bytes = 0;
  int64_t n_elements() const;
  int64_t rows() const;  // product of dims[1..]
};

class GgufFile {
 public:
  // Maps and parses a file. Throws Io when it cannot be read, Format (naming field and byte offset)
  // when it is malformed, Unsupported for a tensor type this runtime does not read.
  static GgufFile open(const std::string& path);
  // Parses a buffer that the caller keeps alive (tests, fuzzing).
  static GgufFile parse(const uint8_t* data, size_t size, const std::string& label = "<buffer>");

  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }
  const std::string& label() const { return label_; }
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }

  bool has(const std::string& key) const { return metadata_.count(key) != 0; }
  const GgufValue& get(const std::string& key) const;  // throws Format naming a missing key
  // Typed accessors; throw Format naming the key when absent or of an incompatible type.
  uint64_t get_uint(const std::string& key) const;
  double get_float(const std::string& key) const;
  std::string get_string(const std::string& key) const;
  bool get_bool(const std::string& key, bool fallback) const;
  std::vector<std::string> get_string_array(const std::string& key) const;

  const TensorInfo* find_tensor(const std::string& name) const;
  const TensorInfo& tensor(const std::string& name) const;  // throws Format when absent

 private:
  std::shared_ptr<MappedFile> file_;  // null for parse()
  std::string label_;
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  std::map<std::string, GgufValue> metadata_;
  std::vector<TensorInfo> tensors_;
};

}  // namespace polarquant::model
