// llama.cpp's q8_0 and q4_0 cache types, byte for byte, optionally after a randomized Hadamard
// rotation (q8_0h, q4_0h) as recent llama.cpp versions apply to the cache.
//
// q8_0 block (34 bytes, 32 values): fp16 d = amax / 127, then 32 int8 q = round(x / d); x = q * d.
// q4_0 block (18 bytes, 32 values): fp16 d = m / -8 where m is the value of largest magnitude (its
// sign kept), then 16 bytes: byte j holds value j in the low nibble and value j + 16 in the high
// nibble, each min(15, trunc(x / d + 8.5)); x = (q - 8) * d. As in ggml's reference quantizer the
// codes use the fp32 scale and only the stored scale is rounded to fp16.
#include <polarquant/error.h>
#include <polarquant/half.h>
#include <polarquant/rotation.h>

#include "codecs/bit_pack.h"
#include "codecs/peer_codecs.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace polarquant::codecs {
namespace {

constexpr int kBlock = 32;

class BlockCodec final : public Codec {
 public:
  BlockCodec(std::string name, int bits, bool rotate, int dim, uint64_t seed)
      : name_(std::move(name)), bits_(bits), dim_(dim) {
    if (rotate) rotation_ = Rotation(RotationKind::kHadamard, dim, seed);
  }
  std::string name() const override { return name_; }
  int dim() const override { return dim_; }
  size_t group_bytes() const override { return blocks() * block_bytes(); }

  void encode(const float* x, size_t n, uint8_t* codes) const override {
    check_finite(name_.c_str(), x, n, dim_);
    const size_t d = static_cast<size_t>(dim_);
    std::vector<float> y(n * d);
    if (rotation_.kind() == RotationKind::kHadamard) {
      rotation_.forward(x, y.data(), n);
    } else {
      std::copy(x, x + n * d, y.begin());
    }
    // Validate every scale before writing, so a refused batch leaves the output untouched.
    std::vector<float> scales(n * blocks());
    for (size_t b = 0; b < scales.size(); ++b) {
      scales[b] = block_scale(y.data() + b * kBlock);
      checked_half(scales[b], name_.c_str(), "block scale", b);
    }
    for (size_t b = 0; b < scales.size(); ++b) {
      encode_block(y.data() + b * kBlock, scales[b], codes + b * block_bytes());
    }
  }

  void decode(const uint8_t* codes, size_t n, float* x) const override {
    const size_t total = n * blocks();
    for (size_t b = 0; b < total; ++b) {
      const uint8_t* block = codes + b * block_bytes();
      const float d = stored_half(block, name_.c_str(), "block scale", b);
      float* out = x + b * kBlock;
      if (bits_ == 8) {
        for (int j = 0; j < kBlock; ++j)
          out[j] = static_cast<float>(static_cast<int8_t>(block[2 + j])) * d;
      } else {
        for (int j = 0; j < kBlock / 2; ++j) {
          out[j] = static_cast<float>((block[2 + j] & 0x0f) - 8) * d;
          out[j + kBlock / 2] = static_cast<float>((block[2 + j] >> 4) - 8) * d;
        }
      }
    }
    if (rotation_.kind() == RotationKind::kHadamard) rotation_.inverse(x, x, n);
  }

 private:
  size_t blocks() const { return static_cast<size_t>(dim_ / kBlock); }
  size_t block_bytes() const { return 2 + static_cast<size_t>(kBlock * bits_ / 8); }

  float block_scale(const float* v) const {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kBlock; ++j) {
      if (amax < std::fabs(v[j])) {
        amax = std::fabs(v[j]);
        max = v[j];
      }
    }
    return bits_ == 8 ? amax / 127.0f : max / -8.0f;
  }

  void encode_block(const float* v, float d, uint8_t* out) const {
    // A scale so small that its reciprocal overflows (|d| < 2^-128; its fp16 is 0, so the block
    // decodes to zeros anyway) codes as zeros: an infinite id would turn v * id into +-inf, and
    // converting that to an integer is undefined behaviour (found by fuzz/cache_file_fuzz).
    const float inverse = 1.0f / d;
    const float id = d != 0.0f && std::isfinite(inverse) ? inverse : 0.0f;
    store_u16(out, float_to_half(d));
    if (bits_ == 8) {
      // |v * id| <= 127 (up to rounding of id), so the rounded value fits int8.
      for (int j = 0; j < kBlock; ++j) {
        const long q = std::lround(v[j] * id);
        out[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::clamp(q, -127L, 127L)));
      }
    } else {
      // v * id lies in [-8, 8] (the extreme value maps to -8), so v * id + 8.5 is in [0.5, 16.5]
      // and truncation gives 0..16, clamped to 15.
      for (int j = 0; j < kBlock / 2; ++j) {
        const int q0 = std::min(15, static_cast<int>(v[j] * id + 8.5f));
        const int q1 = std::min(15, static_cast<int>(v[j + kBlock / 2] * id + 8.5f));
        out[2 + j] = static_cast<uint8_t>(q0 | (q1 << 4));
      }
    }
  }

  std::string name_;
  int bits_;
  int dim_;
  Rotation rotation_;
};

}  // namespace

std::unique_ptr<Codec> make_block_codec(std::string_view name, int dim, uint64_t seed) {
  const bool rotate = name.size() == 5 && name.back() == 'h';
  const int bits = name.substr(0, 2) == "q8" ? 8 : 4;
  if (dim < kBlock || dim % kBlock != 0) {
    throw_invalid(std::string(name) + ": dim " + std::to_string(dim) +
                  " must be a positive multiple of the block size 32");
  }
  if (rotate && (dim & (dim - 1)) != 0) {
    throw_invalid(std::string(name) + ": the Hadamard rotation needs a power-of-two dim, got " +
                  std::to_string(dim) + " (use the unrotated " + std::string(name.substr(0, 4)) +
                  ")");
  }
  return std::make_unique<BlockCodec>(std::string(name), bits, rotate, dim, seed);
}

}  // namespace polarquant::codecs
