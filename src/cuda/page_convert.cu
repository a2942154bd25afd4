// convert_pages (cuda.h): pages between the host layout (docs/FORMAT.md section 4) and a codec's
// pairs layout (section 4.1, src/cache/pair_layout.h), on the device. The host-memory twin is
// pages_to_pair_layout / pages_from_pair_layout (src/cache/pair_layout.cpp); the GPU tests hold the
// two to each other byte for byte.
#include <polarquant/cuda.h>
#include <polarquant/error.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "cache/pair_layout.h"
#include "cuda/device_codec.h"
#include "cuda/device_common.cuh"

namespace polarquant::cuda {
namespace {

// Moves one `bits`-bit code from bit `from` of `in` to bit `to` of the zeroed `out`; the second
// byte is read only for a code that straddles it.
__device__ __forceinline__ void move_code(const uint8_t* in, uint32_t from, uint8_t* out,
                                          uint32_t to, int bits) {
  unsigned wide = in[from >> 3];
  if ((from & 7) + bits > 8) wide |= static_cast<unsigned>(in[(from >> 3) + 1]) << 8;
  const unsigned v = (wide >> (from & 7)) & ((1u << bits) - 1u);
  if (v == 0) return;
  unsigned* word = reinterpret_cast<unsigned*>(out) + (to >> 5);
  atomicOr(word, v << (to & 31));
  if ((to & 31) + bits > 32) atomicOr(word + 1, v >> (32 - (to & 31)));
}

// One block per head region, one thread per (slot, 16-coordinate block u): the codes of levels
// 1..4 under u and, on the first block of a radius block (u itself with 4 levels, a 64-coordinate
// superblock with 6), its radius and the codes above level 4 move from their places in one layout
// to the other's. A destination word holds several tokens' codes, so codes are ORed into the
// zeroed destination.
__global__ void convert_kernel(DeviceCodec c, const uint8_t* src, uint8_t* dst, bool to_pairs) {
  const size_t region = blockIdx.x;  // page * n_kv_heads + head
  const uint8_t* in = src + region * (to_pairs ? c.host_head_bytes : c.head_bytes);
  uint8_t* out = dst + region * (to_pairs ? c.head_bytes : c.host_head_bytes);
  const int above = c.levels - 4;  // levels above the 16-coordinate blocks
  for (int i = threadIdx.x; i < pair_layout::kTokens * (c.dim / 16); i += blockDim.x) {
    const int slot = i % pair_layout::kTokens, u = i / pair_layout::kTokens;
    const auto move = [&](int level, int node) {
      const int bits = c.bits[level - 1];
      const uint32_t host_bit =
          8 * (c.level_offset[level - 1] + node * c.field_bytes[level - 1]) + code_bit(slot, bits);
      const uint32_t pair_bit = pair_layout::code_bit(c.dim, c.levels, level, node, slot);
      move_code(in, to_pairs ? host_bit : pair_bit, out, to_pairs ? pair_bit : host_bit, bits);
    };
    for (int level = 1; level <= 4; ++level) {
      for (int j = 0; j < (1 << (4 - level)); ++j) move(level, (u << (4 - level)) + j);
    }
    if ((u & ((1 << above) - 1)) != 0) continue;
    const int rb = u >> above;  // the radius block this block opens
    const uint32_t host_radius = c.radii_offset + (rb * pair_layout::kTokens + slot) * 2;
    const uint32_t pair_radius = pair_layout::radius_byte(c.dim, c.levels, slot, rb);
    *reinterpret_cast<uint16_t*>(out + (to_pairs ? pair_radius : host_radius)) =
        *reinterpret_cast<const uint16_t*>(in + (to_pairs ? host_radius : pair_radius));
    for (int level = 5; level <= c.levels; ++level) {
      for (int k = 0; k < (1 << (c.levels - level)); ++k) {
        move(level, (rb << (c.levels - level)) + k);
      }
    }
  }
}

}  // namespace

void convert_pages(const CudaPolarCodec& codec, const uint8_t* src, uint8_t* dst, size_t count,
                   bool to_codec_layout, Stream stream) {
  if (count == 0) return;
  if (src == nullptr || dst == nullptr) throw_invalid("convert_pages: null device pointer");
  const DeviceCodec& c = codec.device();
  if (!c.pairs) {
    check_cuda(cudaMemcpyAsync(dst, src, count * c.page_bytes, cudaMemcpyDeviceToDevice, stream),
               "cudaMemcpyAsync(convert_pages)");
    return;
  }
  const size_t regions = count * static_cast<size_t>(c.n_kv_heads);
  if (regions > 0x7fffffffu) throw_invalid("convert_pages: too many pages in one call");
  const size_t dst_bytes = regions * (to_codec_layout ? c.head_bytes : c.host_head_bytes);
  check_cuda(cudaMemsetAsync(dst, 0, dst_bytes, stream), "cudaMemsetAsync(convert_pages)");
  convert_kernel<<<static_cast<unsigned>(regions), 128, 0, stream>>>(c, src, dst, to_codec_layout);
  check_cuda(cudaGetLastError(), "launch(convert_pages)");
}

}  // namespace polarquant::cuda
