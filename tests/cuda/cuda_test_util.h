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

#define POLARQUANT_REQUIRE_GPU()                                          \
  do {                                                                    \
    std::string why;                                                      \
    if (!::polarquant::cuda::device_available(&why))                      \
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

// The head region of page `page` of a sequence in the CPU cache. The region bytes are what the
// GPU kernels share with the CPU; how the CPU groups regions into allocations (one allocation per
// page, or slabs of several pages per head) is the cache's business, so both are handled.
template <class Impl, class Layer>
const uint8_t* cpu_region(const Impl& m, const Layer& sl, bool keys, size_t page, int head) {
  if constexpr (requires { m.key_region(sl, page, head); }) {
    return keys ? m.key_region(sl, page, head) : m.value_region(sl, page, head);
  } else {
    const auto& pages = keys ? sl.k_pages : sl.v_pages;
    const size_t head_bytes = keys ? m.key_format->head_bytes() : m.value_format->head_bytes();
    return pages[page].get() + static_cast<size_t>(head) * head_bytes;
  }
}

// Copies the K (or V) head regions of one layer of sequence `seq` into a host image of the GPU
// pool (page ids[i] at ids[i] * page_bytes, its heads one after another).
inline void export_pages(const KvCache& cache, SequenceId seq, bool keys,
                         const std::vector<int32_t>& ids, std::vector<uint8_t>& pool) {
  const KvCache::Impl& m = cache.impl();
  const SequenceLayer& sl = m.layer(seq, 0, "export_pages");
  const PageFormat& format = keys ? *m.key_format : *m.value_format;
  const size_t head_bytes = format.head_bytes();
  const size_t page_bytes = head_bytes * m.options.n_kv_heads;
  const size_t coded = sl.coded;
  const size_t pages = (coded + m.options.page_tokens - 1) / m.options.page_tokens;
  for (size_t i = 0; i < pages; ++i) {
    for (int h = 0; h < m.options.n_kv_heads; ++h) {
      const uint8_t* region = cpu_region(m, sl, keys, i, h);
      std::copy(region, region + head_bytes, pool.begin() + ids[i] * page_bytes + h * head_bytes);
    }
  }
}

}  // namespace polarquant::cuda::test
