// Little-endian byte writing and bounds-checked reading for the project's file and buffer formats.
// ByteReader never reads past its buffer: every get checks the remaining size and throws Format
// naming the buffer ("where"), the field and the byte offset.
#pragma once

#include <polarquant/error.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace polarquant {

class ByteWriter {
 public:
  void u8(uint8_t v) { bytes_.push_back(v); }
  void u16(uint16_t v) { put(v, 2); }
  void u32(uint32_t v) { put(v, 4); }
  void u64(uint64_t v) { put(v, 8); }
  void f32(float v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    u32(u);
  }
  void str(const std::string& s) {
    u32(static_cast<uint32_t>(s.size()));
    raw(s.data(), s.size());
  }
  void raw(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    bytes_.insert(bytes_.end(), p, p + n);
  }
  std::vector<uint8_t>& bytes() { return bytes_; }

 private:
  void put(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) bytes_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  std::vector<uint8_t> bytes_;
};

class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size, std::string where)
      : data_(data), size_(size), where_(std::move(where)) {}

  uint8_t u8(const char* field) { return static_cast<uint8_t>(get(field, 1)); }
  uint16_t u16(const char* field) { return static_cast<uint16_t>(get(field, 2)); }
  uint32_t u32(const char* field) { return static_cast<uint32_t>(get(field, 4)); }
  uint64_t u64(const char* field) { return get(field, 8); }
  float f32(const char* field) {
    const uint32_t u = u32(field);
    float v;
    std::memcpy(&v, &u, 4);
    return v;
  }
  // A u32 length (at most max_bytes) followed by that many bytes (ByteWriter::str).
  std::string str(const char* field, size_t max_bytes) {
    const uint32_t n = u32(field);
    if (n > max_bytes) {
      pos_ -= 4;
      fail(std::string("field '") + field + "' is " + std::to_string(n) + " bytes long; at most " +
           std::to_string(max_bytes) + " expected");
    }
    const uint8_t* p = take(n, field);
    return std::string(reinterpret_cast<const char*>(p), n);
  }
  // Returns a pointer to the next n bytes and advances past them.
  const uint8_t* take(size_t n, const char* field) {
    require(n, field);
    const uint8_t* p = data_ + pos_;
    pos_ += n;
    return p;
  }
  size_t position() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }
  const std::string& where() const { return where_; }
  [[noreturn]] void fail(const std::string& message) const {
    throw_format(where_ + ": " + message + " (at byte offset " + std::to_string(pos_) + ")");
  }

 private:
  void require(size_t n, const char* field) const {
    if (n > size_ - pos_) {
      fail(std::string("truncated: field '") + field + "' needs " + std::to_string(n) +
           " bytes but only " + std::to_string(size_ - pos_) + " remain");
    }
  }
  uint64_t get(const char* field, int n) {
    require(static_cast<size_t>(n), field);
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(data_[pos_ + i]) << (8 * i);
    pos_ += static_cast<size_t>(n);
    return v;
  }
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  std::string where_;
};

// CRC-32 (IEEE 802.3, reflected, as zlib computes it).
uint32_t crc32(const uint8_t* data, size_t size);
// CRC-32C (Castagnoli, reflected polynomial 0x82f63b78, as iSCSI / ext4 / RFC 3720): crc32c of
// "123456789" is 0xe3069283.
uint32_t crc32c(const uint8_t* data, size_t size);
// 64-bit FNV-1a, continuing from `hash` (start with kFnv64Offset). Not cryptographic: it tells
// files apart, it does not authenticate them.
inline constexpr uint64_t kFnv64Offset = 0xcbf29ce484222325ull;
uint64_t fnv1a64(uint64_t hash, const void* data, size_t size);

// Whole-file helpers throwing Io with the path and the system's reason. write_file_bytes writes
// PATH.tmp, syncs it and renames it to PATH, so PATH is never left half-written.
std::vector<uint8_t> read_file_bytes(const std::string& path);
void write_file_bytes(const std::string& path, const std::vector<uint8_t>& bytes);

}  // namespace polarquant
