#include "model/gguf.h"

#include <polarquant/error.h>

#include <cstring>
#include <limits>
#include <set>

namespace polarquant::model {

namespace {

constexpr uint32_t kMagic = 0x46554747u;  // "GGUF" little-endian
constexpr uint64_t kMaxStringBytes = 1ull << 30;
constexpr int kMaxArrayDepth = 4;
constexpr uint32_t kMaxDims = 4;

// A bounds-checked little-endian cursor; every read names what it was reading and where.
class Cursor {
 public:
  Cursor(const uint8_t* data, size_t size, const std::string& label)
      : data_(data), size_(size), label_(label) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  [[noreturn]] void fail(const std::string& what, size_t at) const {
    throw_format("GGUF '" + label_ + "': " + what + " at byte offset " + std::to_string(at));
  }

  void need(size_t n, const char* field) const {
    if (n > remaining()) {
      fail(std::string("truncated ") + field + " (needs " + std::to_string(n) + " bytes, " +
               std::to_string(remaining()) + " left)",
           pos_);
    }
  }

  template <typename T>
  T read(const char* field) {
    need(sizeof(T), field);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string read_string(const char* field) {
    const size_t at = pos_;
    const uint64_t len = read<uint64_t>(field);
    if (len > kMaxStringBytes)
      fail(std::string(field) + " length " + std::to_string(len) + " is implausible", at);
    need(static_cast<size_t>(len), field);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return s;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& label_;
};

size_t min_value_bytes(GgufType t) {
  switch (t) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kBool:
      return 1;
    case GgufType::kU16:
    case GgufType::kI16:
      return 2;
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kF32:
      return 4;
    case GgufType::kU64:
    case GgufType::kI64:
    case GgufType::kF64:
    case GgufType::kString:
      return 8;
    case GgufType::kArray:
      return 12;
  }
  return 1;
}

GgufValue read_value(Cursor& c, GgufType type, const std::string& key, int depth) {
  GgufValue v;
  v.type = type;
  const size_t at = c.pos();
  switch (type) {
    case GgufType::kU8:
      v.u = c.read<uint8_t>("u8 value");
      break;
    case GgufType::kI8:
      v.i = c.read<int8_t>("i8 value");
      break;
    case GgufType::kU16:
      v.u = c.read<uint16_t>("u16 value");
      break;
    case GgufType::kI16:
      v.i = c.read<int16_t>("i16 value");
      break;
    case GgufType::kU32:
      v.u = c.read<uint32_t>("u32 value");
      break;
    case GgufType::kI32:
      v.i = c.read<int32_t>("i32 value");
      break;
    case GgufType::kU64:
      v.u = c.read<uint64_t>("u64 value");
      break;
    case GgufType::kI64:
      v.i = c.read<int64_t>("i64 value");
      break;
    case GgufType::kF32:
      v.f = c.read<float>("f32 value");
      break;
    case GgufType::kF64:
      v.f = c.read<double>("f64 value");
      break;
    case GgufType::kBool: {
      const uint8_t b = c.read<uint8_t>("bool value");
      if (b > 1)
        c.fail("bool value of key '" + key + "' is " + std::to_string(b) + ", expected 0 or 1", at);
      v.u = b;
      break;
    }
    case GgufType::kString:
      v.s = c.read_string("string value");
      break;
    case GgufType::kArray: {
      if (depth >= kMaxArrayDepth) c.fail("arrays nested deeper than 4 in key '" + key + "'", at);
      const uint32_t et = c.read<uint32_t>("array element type");
      if (et > static_cast<uint32_t>(GgufType::kF64)) {
        c.fail(
            "array element type " + std::to_string(et) + " of key '" + key + "' is unknown (0..12)",
            at);
      }
      v.element_type = static_cast<GgufType>(et);
      const uint64_t n = c.read<uint64_t>("array length");
      // Each element takes at least min_value_bytes: refuse counts the file cannot hold before
      // reserving memory for them.
      if (n > c.remaining() / min_value_bytes(v.element_type)) {
        c.fail("array length " + std::to_string(n) + " of key '" + key + "' exceeds the file", at);
      }
      v.elements.reserve(static_cast<size_t>(n));
      for (uint64_t k = 0; k < n; ++k)
        v.elements.push_back(read_value(c, v.element_type, key, depth + 1));
      break;
    }
    default:
      c.fail("value type " + std::to_string(static_cast<uint32_t>(type)) + " of key '" + key +
                 "' is unknown (0..12)",
             at);
  }
  return v;
}

bool mul_overflows(int64_t a, int64_t b, int64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}

}  // namespace

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufType::kU8:
    case GgufType::kU16:
    case GgufType::kU32:
    case GgufType::kU64:
    case GgufType::kI8:
    case GgufType::kI16:
    case GgufType::kI32:
    case GgufType::kI64:
      return true;
    default:
      return false;
  }
}

int64_t TensorInfo::n_elements() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;  // checked for overflow when parsed
  return n;
}

int64_t TensorInfo::rows() const {
  return dims.empty() ? 0 : n_elements() / dims[0];
}

GgufFile GgufFile::open(const std::string& path) {
  auto file = std::make_shared<MappedFile>(path);
  GgufFile g = parse(file->data(), file->size(), path);
  g.file_ = std::move(file);
  return g;
}

GgufFile GgufFile::parse(const uint8_t* data, size_t size, const std::string& label) {
  GgufFile g;
  g.label_ = label;
  Cursor c(data, size, g.label_);
  const uint32_t magic = c.read<uint32_t>("magic");
  if (magic != kMagic) c.fail("magic is not 'GGUF'", 0);
  g.version_ = c.read<uint32_t>("version");
  if (g.version_ != 3) {
    c.fail("version " + std::to_string(g.version_) + " is not supported (expected 3)", 4);
  }
  const uint64_t n_tensors = c.read<uint64_t>("tensor_count");
  const uint64_t n_kv = c.read<uint64_t>("metadata_kv_count");
  // A key/value takes at least 8 (key length) + 4 (type) + 1 bytes, a tensor info at least 8 + 4 +
  // 4 + 8: refuse counts that cannot fit.
  if (n_kv > c.remaining() / 13)
    c.fail("metadata_kv_count " + std::to_string(n_kv) + " exceeds the file", 16);
  if (n_tensors > c.remaining() / 24)
    c.fail("tensor_count " + std::to_string(n_tensors) + " exceeds the file", 8);

  for (uint64_t k = 0; k < n_kv; ++k) {
    const size_t at = c.pos();
    std::string key = c.read_string("metadata key");
    const uint32_t t = c.read<uint32_t>("metadata value type");
    if (t > static_cast<uint32_t>(GgufType::kF64)) {
      c.fail("value type " + std::to_string(t) + " of key '" + key + "' is unknown (0..12)", at);
    }
    GgufValue v = read_value(c, static_cast<GgufType>(t), key, 0);
    if (!g.metadata_.emplace(key, std::move(v)).second)
      c.fail("duplicate metadata key '" + key + "'", at);
  }
  if (auto it = g.metadata_.find("general.alignment"); it != g.metadata_.end()) {
    const GgufValue& a = it->second;
    const uint64_t align = a.type == GgufType::kU32 ? a.u : 0;
    if (align == 0 || (align & (align - 1)) != 0 || align > (1u << 20)) {
      c.fail("general.alignment must be a u32 power of two up to 2^20", 0);
    }
    g.alignment_ = static_cast<size_t>(align);
  }

  std::set<std::string> names;
  g.tensors_.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    const size_t at = c.pos();
    TensorInfo t;
    t.name = c.read_string("tensor name");
    if (!names.insert(t.name).second) c.fail("duplicate tensor name '" + t.name + "'", at);
    const uint32_t n_dims = c.read<uint32_t>("tensor n_dims");
    if (n_dims == 0 || n_dims > kMaxDims) {
      c.fail(
          "tensor '" + t.name + "' has " + std::to_string(n_dims) + " dimensions (expected 1..4)",
          at);
    }
    int64_t n_elem = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t dim = c.read<uint64_t>("tensor dimension");
      if (dim == 0 || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          mul_overflows(n_elem, static_cast<int64_t>(dim), &n_elem)) {
        c.fail("tensor '" + t.name + "' dimension " + std::to_string(d) + " = " +
                   std::to_string(dim) + " is zero or overflows",
               at);
      }
      t.dims.push_back(static_cast<int64_t>(dim));
    }
    const uint32_t type = c.read<uint32_t>("tensor type");
    if (!is_supported_type(type)) {
      throw Error(ErrorKind::kUnsupported,
                  "GGUF '" + label + "': tensor '" + t.name + "' has type " + type_name(type) +
                      " (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K)");
    }
    t.type = static_cast<GgmlType>(type);
    const TypeInfo info = type_info(type);
    if (t.dims[0] % info.block_size != 0) {
      c.fail("tensor '" + t.name + "' row length " + std::to_string(t.dims[0]) +
                 " is not a multiple of the " + info.name + " block size " +
                 std::to_string(info.block_size),
             at);
    }
    const uint64_t blocks = static_cast<uint64_t>(n_elem / info.block_size);
    if (blocks > std::numeric_limits<uint64_t>::max() / info.block_bytes)
      c.fail("tensor '" + t.name + "' size overflows", at);
    t.n_bytes = static_cast<size_t>(blocks * info.block_bytes);
    t.offset = c.read<uint64_t>("tensor offset");
    if (t.offset % g.alignment_ != 0) {
      c.fail("tensor '" + t.name + "' offset " + std::to_string(t.offset) +
                 " is not a multiple of the alignment " + std::to_string(g.alignment_),
             at);
    }
    g.tensors_.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment after the directory.
  const size_t data_start = (c.pos() + g.alignment_ - 1) / g.alignment_ * g.alignment_;
  if (data_start > size && !g.tensors_.empty())
    c.fail("data section starts past the end of the file", c.pos());
  const size_t data_size = data_start <= size ? size - data_start : 0;
  for (auto& t : g.tensors_) {
    if (t.offset > data_size || t.n_bytes > data_size - t.offset) {
      throw_format("GGUF '" + label + "': tensor '" + t.name + "' (" + std::to_string(t.n_bytes) +
                   " bytes at data offset " + std::to_string(t.offset) +
                   ") extends past the end of the file (" + std::to_string(data_size) +
                   " data bytes)");
    }
    t.data = data + data_start + t.offset;
  }
  return g;
}

const GgufValue& GgufFile::get(const std::string& key) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end())
    throw_format("GGUF '" + label_ + "': metadata key '" + key + "' is missing");
  return it->second;
}

uint64_t GgufFile::get_uint(const std::string& key) const {
  const GgufValue& v = get(key);
  if (!v.is_integer() || (v.i < 0)) {
    throw_format("GGUF '" + label_ + "': metadata key '" + key + "' is not a non-negative integer");
  }
  return v.u != 0 ? v.u : static_cast<uint64_t>(v.i);
}

double GgufFile::get_float(const std::string& key) const {
  const GgufValue& v = get(key);
  if (v.is_float()) return v.f;
  if (v.is_integer()) return v.u != 0 ? static_cast<double>(v.u) : static_cast<double>(v.i);
  throw_format("GGUF '" + label_ + "': metadata key '" + key + "' is not a number");
}

std::string GgufFile::get_string(const std::string& key) const {
  const GgufValue& v = get(key);
  if (v.type != GgufType::kString)
    throw_format("GGUF '" + label_ + "': metadata key '" + key + "' is not a string");
  return v.s;
}

bool GgufFile::get_bool(const std::string& key, bool fallback) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end()) return fallback;
  if (it->second.type != GgufType::kBool)
    throw_format("GGUF '" + label_ + "': metadata key '" + key + "' is not a bool");
  return it->second.u != 0;
}

std::vector<std::string> GgufFile::get_string_array(const std::string& key) const {
  const GgufValue& v = get(key);
  if (v.type != GgufType::kArray || v.element_type != GgufType::kString) {
    throw_format("GGUF '" + label_ + "': metadata key '" + key + "' is not an array of strings");
  }
  std::vector<std::string> out;
  out.reserve(v.elements.size());
  for (const auto& e : v.elements) out.push_back(e.s);
  return out;
}

const TensorInfo* GgufFile::find_tensor(const std::string& name) const {
  for (const auto& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

const TensorInfo& GgufFile::tensor(const std::string& name) const {
  const TensorInfo* t = find_tensor(name);
  if (t == nullptr) throw_format("GGUF '" + label_ + "': tensor '" + name + "' is missing");
  return *t;
}

}  // namespace polarquant::model
