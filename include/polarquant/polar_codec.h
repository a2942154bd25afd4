// The PolarQuant codec: random rotation, recursive polar transform, per-level angle codebooks,
// block radii in fp16 / bf16 / fp32. Byte layout of one encoded vector and of the self-describing
// container: docs/FORMAT.md.
#pragma once

#include <polarquant/codebook.h>
#include <polarquant/codec.h>
#include <polarquant/half.h>
#include <polarquant/polar_transform.h>
#include <polarquant/rotation.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace polarquant {

enum class RadiusPrecision { kFp16, kBf16, kFp32 };
std::string_view radius_precision_name(RadiusPrecision p);
RadiusPrecision parse_radius_precision(std::string_view name);  // "fp16", "bf16", "fp32"
inline int radius_bytes(RadiusPrecision p) {
  return p == RadiusPrecision::kFp32 ? 4 : 2;
}

// One stored radius, little-endian, in radius_bytes(p) bytes: the one definition used by the codec
// records, the cache pages and the kernels.
inline void store_radius(uint8_t* out, float r, RadiusPrecision p) {
  const uint32_t bits = p == RadiusPrecision::kFp32   ? float_bits(r)
                        : p == RadiusPrecision::kFp16 ? float_to_half(r)
                                                      : float_to_bf16(r);
  for (int i = 0; i < radius_bytes(p); ++i) out[i] = static_cast<uint8_t>(bits >> (8 * i));
}
inline float load_radius(const uint8_t* in, RadiusPrecision p) {
  uint32_t bits = 0;
  for (int i = 0; i < radius_bytes(p); ++i) bits |= static_cast<uint32_t>(in[i]) << (8 * i);
  if (p == RadiusPrecision::kFp32) return bits_float(bits);
  return p == RadiusPrecision::kFp16 ? half_to_float(static_cast<uint16_t>(bits))
                                     : bf16_to_float(static_cast<uint16_t>(bits));
}

struct PolarConfig {
  int dim = 128;
  int levels = 4;
  std::vector<int> bits = {4, 2, 2, 2};  // bits per angle, level 1 first; one entry per level
  RadiusPrecision radius = RadiusPrecision::kFp16;
  RotationKind rotation = RotationKind::kDense;
  uint64_t seed = kDefaultSeed;
  // One codebook per level (level 1 first) or empty for the analytic Lloyd-Max codebooks.
  std::vector<Codebook> codebooks;
  std::string name = "custom";  // reported by Codec::name()

  // Throws InvalidArgument naming the offending field (dim, levels, bits[i], codebooks[i]).
  void validate() const;
  // Bits of one vector before byte padding: radii plus all angle codes.
  size_t payload_bits() const;
};

// Named allocations. "paper": L=4, bits 4,2,2,2, fp16 radius (3.875 bits/coordinate).
// "polar37": L=6, bits 4,3,3,3,3,3 (3.70 bits before padding, NMSE ~1.7x below paper).
// "polar39": L=5, bits 4,3,3,3,3 (3.906 bits). "polar41": L=7, 4 bits everywhere (4.09 bits).
// "polar-DIGITS": an explicit allocation, one digit 1..8 per level, level 1 first ("polar-4222" is
// paper's); like the presets, a dim that is not a multiple of 2^levels keeps the levels that fit.
// Throws InvalidArgument for an unknown name (listing the known ones) or a dim the preset cannot
// split into its blocks.
PolarConfig polar_preset(std::string_view name, int dim);
std::vector<std::string> polar_preset_names();
// A named preset or a polar-DIGITS name (not validated beyond the prefix).
bool is_polar_codec_name(std::string_view name);

class PolarCodec final : public Codec {
 public:
  explicit PolarCodec(PolarConfig config);
  // This codec with other angle codebooks (one per level, validated as PolarConfig::codebooks),
  // sharing its rotation (no second copy, no second factorisation): the cache's online codebooks.
  std::unique_ptr<PolarCodec> with_codebooks(std::vector<Codebook> codebooks) const;

  std::string name() const override { return config_.name; }
  int dim() const override { return config_.dim; }
  size_t group_bytes() const override { return code_bytes_; }
  void encode(const float* x, size_t n, uint8_t* codes) const override;
  void decode(const uint8_t* codes, size_t n, float* x) const override;

  const PolarConfig& config() const { return config_; }
  const PolarShape& shape() const { return shape_; }
  const Rotation& rotation() const { return *rotation_; }
  const std::vector<Codebook>& codebooks() const { return codebooks_; }

  // Quantizes already-rotated vectors y (n x dim) to per-level code indices (n x num_angles, level
  // 1 first as in polar_forward) and radii rounded to the radius precision (n x num_radii). The
  // building block of encode and of the cache's page encoder.
  // No atan2: an angle is compared with each decision boundary t through the sign of
  // b cos(t) - a sin(t) (level 1 first folds the lower half-plane onto the upper one), so a code
  // can differ from quantize_rotated_reference only for an angle within float rounding of a
  // boundary.
  void quantize_rotated(const float* y, size_t n, uint8_t* indices, float* radii) const;
  // The plain twin: polar_forward, then Codebook::quantize on every angle.
  void quantize_rotated_reference(const float* y, size_t n, uint8_t* indices, float* radii) const;
  // Reconstructs rotated vectors from indices and radii (inverse of quantize_rotated).
  void dequantize_rotated(const uint8_t* indices, const float* radii, size_t n, float* y) const;

  // Self-describing container: header (config, count), codebooks when not analytic, codes, CRC-32.
  std::vector<uint8_t> pack(const float* x, size_t n) const;
  struct Unpacked {
    PolarConfig config;
    size_t count = 0;
    std::vector<float> vectors;  // count x dim, decoded
  };
  // Throws Format, naming the field or the byte offset, for a truncated, corrupt or unsupported
  // container.
  static Unpacked unpack(const uint8_t* data, size_t size);

 private:
  PolarCodec(PolarConfig config, std::shared_ptr<const Rotation> rotation);

  PolarConfig config_;
  PolarShape shape_;
  std::shared_ptr<const Rotation> rotation_;
  std::vector<Codebook> codebooks_;
  // Per level (index level - 1): cos and sin of the decision boundaries; at level 1 those in
  // [pi, 2pi) are stored minus pi, after the first level1_upper_ boundaries that lie in [0, pi).
  std::vector<std::vector<float>> boundary_cos_, boundary_sin_;
  int level1_upper_ = 0;
  size_t code_bytes_ = 0;
};

}  // namespace polarquant
