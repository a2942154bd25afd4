// KIVI (Liu et al. 2024): asymmetric min/max integer quantization with an fp16 scale and minimum
// per group of G = 32 values.
//
// Keys (kivi2k, kivi4k) are grouped per channel over 32 consecutive tokens, so one group is 32
// vectors (group_size() == 32); the cache keeps a partial group in full precision until it fills.
// Group layout: dim fp16 scales, dim fp16 minimums, then per channel its 32 token codes
// (channel-major, tokens fastest), packed LSB-first (codecs/bit_pack.h).
// Values (kivi2v, kivi4v) are grouped per token over 32 consecutive channels (the last group of a
// dim that is not a multiple of 32 is shorter). Vector layout: per channel group, fp16 scale, fp16
// minimum, then the group's codes packed LSB-first and padded to a byte.
// Quantization uses the stored (fp16-rounded) scale and minimum: q = clamp(round((x - min) /
// scale), 0, 2^b - 1), x_hat = min + q * scale; a constant group (scale 0) stores q = 0.
#include <polarquant/error.h>
#include <polarquant/half.h>

#include "codecs/bit_pack.h"
#include "codecs/peer_codecs.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace polarquant::codecs {
namespace {

constexpr int kGroup = 32;

struct MinScale {
  uint16_t min_h, scale_h;
  float min, scale;
};

// Min/max of `count` values spaced `stride` apart, turned into the stored fp16 minimum and scale.
MinScale min_scale(const float* v, int count, size_t stride, int bits, const char* codec,
                   size_t group) {
  float lo = v[0], hi = v[0];
  for (int i = 1; i < count; ++i) {
    lo = std::min(lo, v[static_cast<size_t>(i) * stride]);
    hi = std::max(hi, v[static_cast<size_t>(i) * stride]);
  }
  MinScale m{};
  m.min_h = checked_half(lo, codec, "minimum", group);
  m.min = half_to_float(m.min_h);
  // Compute the range in double: hi - lo can overflow float for finite inputs.
  const double range = static_cast<double>(hi) - static_cast<double>(m.min);
  const double scale = std::max(0.0, range) / static_cast<double>((1 << bits) - 1);
  if (!(scale <= 65504.0)) {  // also keeps the double -> float conversion below defined
    throw_invalid(std::string(codec) + " encode: group " + std::to_string(group) + ": scale " +
                  std::to_string(scale) + " overflows fp16 (value range too wide)");
  }
  m.scale_h = checked_half(static_cast<float>(scale), codec, "scale", group);
  m.scale = half_to_float(m.scale_h);
  return m;
}

uint8_t quantize(float x, const MinScale& m, int bits) {
  if (m.scale == 0.0f) return 0;
  const float q = std::nearbyint((x - m.min) / m.scale);
  return static_cast<uint8_t>(std::clamp(q, 0.0f, static_cast<float>((1 << bits) - 1)));
}

class KiviKeyCodec final : public Codec {
 public:
  KiviKeyCodec(int bits, int dim) : bits_(bits), dim_(dim) {}
  std::string name() const override { return "kivi" + std::to_string(bits_) + "k"; }
  int dim() const override { return dim_; }
  int group_size() const override { return kGroup; }
  size_t group_bytes() const override {
    return static_cast<size_t>(dim_) * (4 + packed_bytes(kGroup, bits_));
  }

  void encode(const float* x, size_t n_groups, uint8_t* codes) const override {
    const std::string name = this->name();
    const size_t d = static_cast<size_t>(dim_);
    check_finite(name.c_str(), x, n_groups * kGroup, dim_);
    std::vector<MinScale> params(n_groups * d);
    for (size_t g = 0; g < n_groups; ++g) {
      for (size_t c = 0; c < d; ++c) {
        params[g * d + c] = min_scale(x + g * kGroup * d + c, kGroup, d, bits_, name.c_str(), g);
      }
    }
    const size_t code_bytes = packed_bytes(kGroup, bits_);
    uint8_t q[kGroup];
    for (size_t g = 0; g < n_groups; ++g) {
      uint8_t* out = codes + g * group_bytes();
      const float* v = x + g * kGroup * d;
      for (size_t c = 0; c < d; ++c) {
        const MinScale& m = params[g * d + c];
        store_u16(out + 2 * c, m.scale_h);
        store_u16(out + 2 * d + 2 * c, m.min_h);
        for (int t = 0; t < kGroup; ++t)
          q[t] = quantize(v[static_cast<size_t>(t) * d + c], m, bits_);
        pack_bits(q, kGroup, bits_, out + 4 * d + c * code_bytes);
      }
    }
  }

  void decode(const uint8_t* codes, size_t n_groups, float* x) const override {
    const std::string name = this->name();
    const size_t d = static_cast<size_t>(dim_);
    const size_t code_bytes = packed_bytes(kGroup, bits_);
    uint8_t q[kGroup];
    for (size_t g = 0; g < n_groups; ++g) {
      const uint8_t* in = codes + g * group_bytes();
      float* v = x + g * kGroup * d;
      for (size_t c = 0; c < d; ++c) {
        const float scale = stored_half(in + 2 * c, name.c_str(), "scale", g);
        const float min = stored_half(in + 2 * d + 2 * c, name.c_str(), "minimum", g);
        if (scale < 0.0f) {
          throw_format(name + " decode: group " + std::to_string(g) + ", channel " +
                       std::to_string(c) + ": negative scale; the codes cannot come from encode");
        }
        unpack_bits(in + 4 * d + c * code_bytes, kGroup, bits_, q);
        for (int t = 0; t < kGroup; ++t)
          v[static_cast<size_t>(t) * d + c] = min + static_cast<float>(q[t]) * scale;
      }
    }
  }

 private:
  int bits_;
  int dim_;
};

class KiviValueCodec final : public Codec {
 public:
  KiviValueCodec(int bits, int dim) : bits_(bits), dim_(dim) {}
  std::string name() const override { return "kivi" + std::to_string(bits_) + "v"; }
  int dim() const override { return dim_; }
  size_t group_bytes() const override {
    size_t bytes = 0;
    for (int c = 0; c < dim_; c += kGroup) bytes += 4 + packed_bytes(width(c), bits_);
    return bytes;
  }

  void encode(const float* x, size_t n, uint8_t* codes) const override {
    const std::string name = this->name();
    const size_t d = static_cast<size_t>(dim_);
    check_finite(name.c_str(), x, n, dim_);
    const size_t groups = static_cast<size_t>((dim_ + kGroup - 1) / kGroup);
    std::vector<MinScale> params(n * groups);
    for (size_t i = 0; i < n; ++i) {
      for (size_t g = 0; g < groups; ++g) {
        const int c = static_cast<int>(g) * kGroup;
        params[i * groups + g] =
            min_scale(x + i * d + static_cast<size_t>(c), width(c), 1, bits_, name.c_str(), i);
      }
    }
    uint8_t q[kGroup];
    for (size_t i = 0; i < n; ++i) {
      uint8_t* out = codes + i * group_bytes();
      for (size_t g = 0; g < groups; ++g) {
        const int c = static_cast<int>(g) * kGroup;
        const MinScale& m = params[i * groups + g];
        store_u16(out, m.scale_h);
        store_u16(out + 2, m.min_h);
        for (int j = 0; j < width(c); ++j)
          q[j] = quantize(x[i * d + static_cast<size_t>(c + j)], m, bits_);
        pack_bits(q, static_cast<size_t>(width(c)), bits_, out + 4);
        out += 4 + packed_bytes(static_cast<size_t>(width(c)), bits_);
      }
    }
  }

  void decode(const uint8_t* codes, size_t n, float* x) const override {
    const std::string name = this->name();
    const size_t d = static_cast<size_t>(dim_);
    uint8_t q[kGroup];
    for (size_t i = 0; i < n; ++i) {
      const uint8_t* in = codes + i * group_bytes();
      for (int c = 0; c < dim_; c += kGroup) {
        const float scale = stored_half(in, name.c_str(), "scale", i);
        const float min = stored_half(in + 2, name.c_str(), "minimum", i);
        if (scale < 0.0f) {
          throw_format(name + " decode: vector " + std::to_string(i) + ", channel group at " +
                       std::to_string(c) + ": negative scale; the codes cannot come from encode");
        }
        unpack_bits(in + 4, static_cast<size_t>(width(c)), bits_, q);
        for (int j = 0; j < width(c); ++j)
          x[i * d + static_cast<size_t>(c + j)] = min + static_cast<float>(q[j]) * scale;
        in += 4 + packed_bytes(static_cast<size_t>(width(c)), bits_);
      }
    }
  }

 private:
  // Channels in the group starting at channel c.
  int width(int c) const { return std::min(kGroup, dim_ - c); }
  int bits_;
  int dim_;
};

void check_kivi(int bits, int dim, const char* role) {
  if (bits != 2 && bits != 4) {
    throw_invalid(std::string("kivi ") + role + ": bits " + std::to_string(bits) +
                  " must be 2 or 4");
  }
  if (dim < 1)
    throw_invalid(std::string("kivi ") + role + ": dim " + std::to_string(dim) + " must be >= 1");
}

}  // namespace

std::unique_ptr<Codec> make_kivi_key_codec(int bits, int dim) {
  check_kivi(bits, dim, "keys");
  return std::make_unique<KiviKeyCodec>(bits, dim);
}

std::unique_ptr<Codec> make_kivi_value_codec(int bits, int dim) {
  check_kivi(bits, dim, "values");
  return std::make_unique<KiviValueCodec>(bits, dim);
}

}  // namespace polarquant::codecs
