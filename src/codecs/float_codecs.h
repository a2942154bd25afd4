// Full-precision reference codecs: "f32" (the float bits as they are) and "f16" (IEEE binary16,
// round to nearest even). They are the baselines the quantized caches are measured against, and the
// cache recognises them to run its fused fp16/fp32 attention on their bytes directly.
#pragma once

#include <polarquant/codec.h>

namespace polarquant {

class F32Codec final : public Codec {
 public:
  explicit F32Codec(int dim);
  std::string name() const override { return "f32"; }
  int dim() const override { return dim_; }
  size_t group_bytes() const override { return 4 * static_cast<size_t>(dim_); }
  void encode(const float* x, size_t n, uint8_t* codes) const override;
  void decode(const uint8_t* codes, size_t n, float* x) const override;

 private:
  int dim_;
};

class F16Codec final : public Codec {
 public:
  explicit F16Codec(int dim);
  std::string name() const override { return "f16"; }
  int dim() const override { return dim_; }
  size_t group_bytes() const override { return 2 * static_cast<size_t>(dim_); }
  void encode(const float* x, size_t n, uint8_t* codes) const override;
  // Throws Format for a stored infinity or NaN (encode never produces one from finite input below
  // 65520 in magnitude; larger finite inputs are refused by encode).
  void decode(const uint8_t* codes, size_t n, float* x) const override;

 private:
  int dim_;
};

}  // namespace polarquant
