// Helpers for the CUDA tests: device buffers, a CPU KvCache filled with Gaussian K/V, and the
// upload of its pages into a device pool under a shuffled page table (so the kernels must follow
// the table, not assume contiguous pages).
#pragma once

#include <polarquant/cuda.h>
#include <polarquant/kv_cache.h>

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cache/kv_cache_impl.h"

namespace polarquant::cuda::test {

#define POLARQUANT_REQUIRE_GPU()                                         \
  do {                                                                   \
    std::string why;                                                     \
    if (!::polarquant::cuda::device_available(&why))                     \
      GTEST_SKIP() << "no CUDA device (" << why << "); GPU test skipped"; \
  } while (0)

#define CUDA_OK(call) ASSERT_EQ(cudaSuccess, (call)) << #call

template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t count) { resize(count); }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void resize(size_t count) {
    cudaFree(ptr_);
    ptr_ = nullptr;
    count_ = count;
    if (count > 0 && cudaMalloc(&ptr_, count * sizeof(T)) != cudaSuccess) ptr_ = nullptr;
    if (ptr_) cudaMemset(ptr_, 0, count * sizeof(T));
  }
  T* get() const { return ptr_; }
  size_t size() const { return count_; }
  void upload(const std::vector<T>& host) {
    cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  std::vector<T> download() const {
    std::vector<T> host(count_);
    cudaMemcpy(host.data(), ptr_, count_ * sizeof(T), cudaMemcpyDeviceToHost);
    return host;
  }

 private:
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

inline std::vector<float> gaussian(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// A shuffled assignment of `pages` page ids (a permutation of 0..pages-1).
inline std::vector<int32_t> shuffled_ids(size_t pages, uint32_t seed) {
  std::vector<int32_t> ids(pages);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(seed));
  return ids;
}

// Copies the K (or V) pages of one layer of sequence `seq` into a host image of the pool.
inline void export_pages(const KvCache& cache, SequenceId seq, bool keys,
                         const std::vector<int32_t>& ids, std::vector<uint8_t>& pool) {
  const KvCache::Impl& m = cache.impl();
  const SequenceLayer& sl = m.layer(seq, 0, "export_pages");
  const size_t bytes = keys ? m.key_page_bytes() : m.value_page_bytes();
  const auto& pages = keys ? sl.k_pages : sl.v_pages;
  for (size_t i = 0; i < pages.size(); ++i) {
    std::copy(pages[i].get(), pages[i].get() + bytes, pool.begin() + ids[i] * bytes);
  }
}

}  // namespace polarquant::cuda::test
