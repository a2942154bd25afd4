// Warp-level tensor-core helpers (sm_80+ PTX, used on sm_90): ldmatrix and the m16n8k16 fp16 MMA
// with fp32 accumulators. Fragment layouts (PTX ISA, "mma.m16n8k16"): with g = lane / 4 and
// t = lane % 4, A holds rows g and g+8, columns 2t..2t+1 and 2t+8..2t+9; B holds rows (k) 2t..2t+1
// and 2t+8..2t+9 of column g; C holds rows g and g+8, columns 2t..2t+1.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

namespace polarquant::cuda {

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(row)));
}

// The same, each matrix transposed (B fragments of a row-major [k][n] tile).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(row)));
}

// c += A (16x16, row) * B (16x8, col), fp16 inputs, fp32 accumulate.
__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0,
                                          uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The transpose of an 8x8 b16 matrix held as one fragment (lane l: row l / 4, columns
// 2 (l % 4) .. + 1), in the same fragment layout.
__device__ __forceinline__ uint32_t movmatrix_trans(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

// A half2 as the 32-bit register of an MMA fragment, and back.
__device__ __forceinline__ uint32_t half2_bits(__half2 h) {
  return *reinterpret_cast<const uint32_t*>(&h);
}
__device__ __forceinline__ __half2 bits_half2(uint32_t u) {
  return *reinterpret_cast<const __half2*>(&u);
}

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  return half2_bits(__floats2half2_rn(lo, hi));
}

}  // namespace polarquant::cuda
