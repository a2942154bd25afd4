// Scalar dequantization of Q5_0 and the K-quants (Q4_K, Q5_K, Q6_K), transcribed from ggml's
// reference decoders (ggml-quants.c: dequantize_row_q5_0, _q4_K, _q5_K, _q6_K) with the same
// operation order, so a value decodes to the same float as in llama.cpp's CPU backend.
#include "model/ggml_types.h"

#include <polarquant/half.h>

#include <cstring>

namespace polarquant::model::detail {

namespace {

// The j-th 6-bit scale and min of a Q4_K/Q5_K super-block (ggml's get_scale_min_k4).
void scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

}  // namespace

void dequantize_q5_0(const uint8_t* row, float* out, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b) {
    BlockQ5_0 blk;
    std::memcpy(&blk, row + b * sizeof blk, sizeof blk);
    const float d = half_to_float(blk.d);
    uint32_t qh;
    std::memcpy(&qh, blk.qh, 4);
    for (int j = 0; j < 16; ++j) {
      const uint8_t xh0 = static_cast<uint8_t>(((qh >> j) << 4) & 0x10);
      const uint8_t xh1 = static_cast<uint8_t>((qh >> (j + 12)) & 0x10);
      const int x0 = ((blk.qs[j] & 0x0F) | xh0) - 16;
      const int x1 = ((blk.qs[j] >> 4) | xh1) - 16;
      out[b * 32 + j] = static_cast<float>(x0) * d;
      out[b * 32 + j + 16] = static_cast<float>(x1) * d;
    }
  }
}

void dequantize_q4_k(const uint8_t* row, float* out, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b) {
    BlockQ4_K blk;
    std::memcpy(&blk, row + b * sizeof blk, sizeof blk);
    const float d = half_to_float(blk.d);
    const float dmin = half_to_float(blk.dmin);
    const uint8_t* q = blk.qs;
    float* y = out + b * kSuperBlock;
    for (int j = 0, is = 0; j < kSuperBlock; j += 64, is += 2, q += 32) {
      uint8_t sc, m;
      scale_min_k4(is, blk.scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      scale_min_k4(is + 1, blk.scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

void dequantize_q5_k(const uint8_t* row, float* out, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b) {
    BlockQ5_K blk;
    std::memcpy(&blk, row + b * sizeof blk, sizeof blk);
    const float d = half_to_float(blk.d);
    const float dmin = half_to_float(blk.dmin);
    const uint8_t* ql = blk.qs;
    float* y = out + b * kSuperBlock;
    unsigned u1 = 1, u2 = 2;
    for (int j = 0, is = 0; j < kSuperBlock; j += 64, is += 2, ql += 32, u1 <<= 2, u2 <<= 2) {
      uint8_t sc, m;
      scale_min_k4(is, blk.scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      scale_min_k4(is + 1, blk.scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l)
        *y++ = d1 * static_cast<float>((ql[l] & 0xF) + (blk.qh[l] & u1 ? 16 : 0)) - m1;
      for (int l = 0; l < 32; ++l)
        *y++ = d2 * static_cast<float>((ql[l] >> 4) + (blk.qh[l] & u2 ? 16 : 0)) - m2;
    }
  }
}

void dequantize_q6_k(const uint8_t* row, float* out, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b) {
    BlockQ6_K blk;
    std::memcpy(&blk, row + b * sizeof blk, sizeof blk);
    const float d = half_to_float(blk.d);
    const uint8_t* ql = blk.ql;
    const uint8_t* qh = blk.qh;
    const int8_t* sc = blk.scales;
    float* y = out + b * kSuperBlock;
    for (int n = 0; n < kSuperBlock; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
        y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
        y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
        y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
      }
    }
  }
}

}  // namespace polarquant::model::detail
