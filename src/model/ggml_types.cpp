#include "model/ggml_types.h"

#include <polarquant/error.h>
#include <polarquant/half.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace polarquant::model {

namespace {

bool lookup(uint32_t id, TypeInfo* info) {
  switch (static_cast<GgmlType>(id)) {
    case GgmlType::kF32:
      *info = {"F32", 1, 4};
      return true;
    case GgmlType::kF16:
      *info = {"F16", 1, 2};
      return true;
    case GgmlType::kBF16:
      *info = {"BF16", 1, 2};
      return true;
    case GgmlType::kQ4_0:
      *info = {"Q4_0", kQuantBlock, sizeof(BlockQ4_0)};
      return true;
    case GgmlType::kQ4_1:
      *info = {"Q4_1", kQuantBlock, sizeof(BlockQ4_1)};
      return true;
    case GgmlType::kQ8_0:
      *info = {"Q8_0", kQuantBlock, sizeof(BlockQ8_0)};
      return true;
    case GgmlType::kQ5_0:
      *info = {"Q5_0", kQuantBlock, sizeof(BlockQ5_0)};
      return true;
    case GgmlType::kQ4_K:
      *info = {"Q4_K", kSuperBlock, sizeof(BlockQ4_K)};
      return true;
    case GgmlType::kQ5_K:
      *info = {"Q5_K", kSuperBlock, sizeof(BlockQ5_K)};
      return true;
    case GgmlType::kQ6_K:
      *info = {"Q6_K", kSuperBlock, sizeof(BlockQ6_K)};
      return true;
  }
  return false;
}

}  // namespace

bool is_supported_type(uint32_t type_id) {
  TypeInfo info{};
  return lookup(type_id, &info);
}

TypeInfo type_info(uint32_t type_id) {
  TypeInfo info{};
  if (!lookup(type_id, &info)) {
    throw Error(ErrorKind::kUnsupported,
                "ggml tensor type " + std::to_string(type_id) +
                    " is not supported (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, "
                    "Q4_K, Q5_K, Q6_K)");
  }
  return info;
}

std::string type_name(uint32_t type_id) {
  TypeInfo info{};
  return lookup(type_id, &info) ? std::string(info.name) : "type#" + std::to_string(type_id);
}

size_t row_bytes(GgmlType type, int64_t n) {
  const TypeInfo info = type_info(static_cast<uint32_t>(type));
  if (n < 0 || n % info.block_size != 0) {
    throw_invalid(std::string("row of ") + std::to_string(n) + " values is not a multiple of the " +
                  info.name + " block size " + std::to_string(info.block_size));
  }
  return static_cast<size_t>(n / info.block_size) * info.block_bytes;
}

void dequantize_row_ref(GgmlType type, const uint8_t* row, float* out, int64_t n) {
  const int64_t nb = n / kQuantBlock;
  switch (type) {
    case GgmlType::kQ5_0:
      detail::dequantize_q5_0(row, out, nb);
      return;
    case GgmlType::kQ4_K:
      detail::dequantize_q4_k(row, out, n / kSuperBlock);
      return;
    case GgmlType::kQ5_K:
      detail::dequantize_q5_k(row, out, n / kSuperBlock);
      return;
    case GgmlType::kQ6_K:
      detail::dequantize_q6_k(row, out, n / kSuperBlock);
      return;
    case GgmlType::kF32:
      std::memcpy(out, row, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, row + 2 * i, 2);
        out[i] = half_to_float(h);
      }
      return;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, row + 2 * i, 2);
        out[i] = bf16_to_float(h);
      }
      return;
    case GgmlType::kQ4_0:
      for (int64_t b = 0; b < nb; ++b) {
        BlockQ4_0 blk;
        std::memcpy(&blk, row + b * sizeof blk, sizeof blk);
        const float d = half_to_float(blk.d);
        for (int j = 0; j < 16; ++j) {
          out[b * 32 + j] = d * static_cast<float>((blk.qs[j] & 0xF) - 8);
          out[b * 32 + j + 16] = d * static_cast<float>((blk.qs[j] >> 4) - 8);
        }
      }
      return;
    case GgmlType::kQ4_1:
      for (int64_t b = 0; b < nb; ++b) {
        BlockQ4_1 blk;
        std::memcpy(&blk, row + b * sizeof blk, sizeof blk);
        const float d = half_to_float(blk.d);
        const float m = half_to_float(blk.m);
        for (int j = 0; j < 16; ++j) {
          out[b * 32 + j] = d * static_cast<float>(blk.qs[j] & 0xF) + m;
          out[b * 32 + j + 16] = d * static_cast<float>(blk.qs[j] >> 4) + m;
        }
      }
      return;
    case GgmlType::kQ8_0:
      for (int64_t b = 0; b < nb; ++b) {
        BlockQ8_0 blk;
        std::memcpy(&blk, row + b * sizeof blk, sizeof blk);
        const float d = half_to_float(blk.d);
        for (int j = 0; j < 32; ++j) out[b * 32 + j] = d * static_cast<float>(blk.qs[j]);
      }
      return;
  }
  type_info(static_cast<uint32_t>(type));  // throws Unsupported
}

double dot_row_ref(GgmlType type, const uint8_t* row, const float* x, int64_t n) {
  // Decode block by block so the reference needs no buffer of the full row.
  const int64_t step = type_info(static_cast<uint32_t>(type)).block_size;
  const size_t step_bytes = row_bytes(type, step);
  float tmp[kSuperBlock];
  double sum = 0.0;
  for (int64_t i = 0; i < n; i += step) {
    dequantize_row_ref(type, row + (i / step) * step_bytes, tmp, step);
    for (int64_t j = 0; j < step; ++j) sum += static_cast<double>(tmp[j]) * x[i + j];
  }
  return sum;
}

void quantize_row_ref(GgmlType type, const float* x, uint8_t* row, int64_t n) {
  row_bytes(type, n);  // validates n against the block size
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i]))
      throw_invalid("quantize_row_ref: value " + std::to_string(i) + " is not finite");
  }
  const int64_t nb = n / kQuantBlock;
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(row, x, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::kF16:
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = type == GgmlType::kF16 ? float_to_half(x[i]) : float_to_bf16(x[i]);
        std::memcpy(row + 2 * i, &h, 2);
      }
      return;
    case GgmlType::kQ4_0:
      for (int64_t b = 0; b < nb; ++b) {
        const float* v = x + b * 32;
        float amax = 0.0f, max = 0.0f;  // ggml: the signed value of largest magnitude maps to -8
        for (int j = 0; j < 32; ++j) {
          if (std::fabs(v[j]) > amax) {
            amax = std::fabs(v[j]);
            max = v[j];
          }
        }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        BlockQ4_0 blk{};
        blk.d = float_to_half(d);
        for (int j = 0; j < 16; ++j) {
          const int q0 = std::min(15, static_cast<int>(v[j] * id + 8.5f));
          const int q1 = std::min(15, static_cast<int>(v[j + 16] * id + 8.5f));
          blk.qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
        }
        std::memcpy(row + b * sizeof blk, &blk, sizeof blk);
      }
      return;
    case GgmlType::kQ4_1:
      for (int64_t b = 0; b < nb; ++b) {
        const float* v = x + b * 32;
        const float lo = *std::min_element(v, v + 32);
        const float hi = *std::max_element(v, v + 32);
        const float d = (hi - lo) / 15.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        BlockQ4_1 blk{};
        blk.d = float_to_half(d);
        blk.m = float_to_half(lo);
        for (int j = 0; j < 16; ++j) {
          const int q0 = std::min(15, static_cast<int>((v[j] - lo) * id + 0.5f));
          const int q1 = std::min(15, static_cast<int>((v[j + 16] - lo) * id + 0.5f));
          blk.qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
        }
        std::memcpy(row + b * sizeof blk, &blk, sizeof blk);
      }
      return;
    case GgmlType::kQ8_0:
      for (int64_t b = 0; b < nb; ++b) {
        const float* v = x + b * 32;
        float amax = 0.0f;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(v[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        BlockQ8_0 blk{};
        blk.d = float_to_half(d);
        for (int j = 0; j < 32; ++j) blk.qs[j] = static_cast<int8_t>(std::lround(v[j] * id));
        std::memcpy(row + b * sizeof blk, &blk, sizeof blk);
      }
      return;
    case GgmlType::kQ5_0:
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
    case GgmlType::kQ6_K:
      throw Error(ErrorKind::kUnsupported, std::string("quantize_row_ref: ") +
                                               type_info(static_cast<uint32_t>(type)).name +
                                               " is read from files only, not quantized here");
  }
  type_info(static_cast<uint32_t>(type));
}

}  // namespace polarquant::model
