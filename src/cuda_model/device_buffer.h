// Owning GPU allocations for the CUDA runtime: one cudaMalloc per buffer, freed on destruction,
// with the size in bytes kept for the memory report. Host code only (no kernels).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <string>
#include <utility>

namespace polarquant::cuda {

void check_cuda(int code, const char* what);  // codec_setup.cu: throws Error(kState) on failure

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t count, const char* what = "cudaMalloc") { allocate(count, what); }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), count_(std::exchange(o.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = std::exchange(o.ptr_, nullptr);
      count_ = std::exchange(o.count_, 0);
    }
    return *this;
  }

  void allocate(size_t count, const char* what = "cudaMalloc") {
    release();
    if (count == 0) return;
    void* p = nullptr;
    check_cuda(cudaMalloc(&p, count * sizeof(T)), what);
    ptr_ = static_cast<T*>(p);
    count_ = count;
  }
  void release() {
    if (ptr_ != nullptr) cudaFree(ptr_);  // errors cannot be reported from a destructor
    ptr_ = nullptr;
    count_ = 0;
  }
  T* get() const { return ptr_; }
  size_t size() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }

 private:
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

// Checks the last launch (kernels report errors only through cudaGetLastError).
inline void check_launch(const char* kernel) {
  check_cuda(cudaGetLastError(), kernel);
}

}  // namespace polarquant::cuda
