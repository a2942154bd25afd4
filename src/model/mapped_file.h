// A read-only memory map of a whole file. Model files are hundreds of megabytes and only parts of
// them are touched per token, so they are mapped rather than read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace polarquant::model {

class MappedFile {
 public:
  MappedFile() = default;
  // Throws Io naming the path and the system error when the file cannot be opened or mapped.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void release();
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

}  // namespace polarquant::model
