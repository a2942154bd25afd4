#include "core/bytes.h"

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include <unistd.h>

namespace polarquant {

namespace {

// Table-driven reflected CRC-32 with the given (reflected) polynomial, initial and final value ~0.
template <uint32_t kPoly>
uint32_t reflected_crc(const uint8_t* data, size_t size) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? kPoly ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < size; ++i) c = table[(c ^ data[i]) & 0xffu] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

}  // namespace

uint32_t crc32(const uint8_t* data, size_t size) {
  return reflected_crc<0xedb88320u>(data, size);
}

uint32_t crc32c(const uint8_t* data, size_t size) {
  return reflected_crc<0x82f63b78u>(data, size);
}

uint64_t fnv1a64(uint64_t hash, const void* data, size_t size) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < size; ++i) hash = (hash ^ p[i]) * 0x100000001b3ull;
  return hash;
}

std::vector<uint8_t> read_file_bytes(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw_io("cannot open '" + path + "' for reading: " + std::strerror(errno));
  std::vector<uint8_t> bytes;
  uint8_t buffer[1 << 16];
  size_t got;
  while ((got = std::fread(buffer, 1, sizeof buffer, f)) > 0)
    bytes.insert(bytes.end(), buffer, buffer + got);
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) throw_io("error while reading '" + path + "'");
  return bytes;
}

void write_file_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  // Write to a temporary file and rename, so that a failed write never destroys an existing file.
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw_io("cannot open '" + tmp + "' for writing: " + std::strerror(errno));
  // fsync before the rename: after a crash the real name holds either the old file or all of the
  // new one.
  // (An empty vector's data() may be null, which fwrite must not get.)
  const bool ok =
      (bytes.empty() || std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size()) &&
      std::fflush(f) == 0 && fsync(fileno(f)) == 0;
  const bool closed = std::fclose(f) == 0;
  if (!ok || !closed) {
    std::remove(tmp.c_str());
    throw_io("error while writing '" + tmp + "'");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string reason = std::strerror(errno);
    std::remove(tmp.c_str());
    throw_io("cannot rename '" + tmp + "' to '" + path + "': " + reason);
  }
}

}  // namespace polarquant
