#include <polarquant/error.h>
#include <polarquant/half.h>
#include <polarquant/polar_codec.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/bitpack.h"
#include "core/bytes.h"

namespace polarquant {

std::string_view radius_precision_name(RadiusPrecision p) {
  switch (p) {
    case RadiusPrecision::kFp16:
      return "fp16";
    case RadiusPrecision::kBf16:
      return "bf16";
    case RadiusPrecision::kFp32:
      return "fp32";
  }
  return "unknown";
}

RadiusPrecision parse_radius_precision(std::string_view name) {
  if (name == "fp16") return RadiusPrecision::kFp16;
  if (name == "bf16") return RadiusPrecision::kBf16;
  if (name == "fp32") return RadiusPrecision::kFp32;
  throw_invalid("unknown radius precision '" + std::string(name) +
                "'; expected fp16, bf16 or fp32");
}

namespace {

float round_radius(float r, RadiusPrecision p) {
  switch (p) {
    case RadiusPrecision::kFp16:
      return half_to_float(float_to_half(r));
    case RadiusPrecision::kBf16:
      return bf16_to_float(float_to_bf16(r));
    case RadiusPrecision::kFp32:
      return r;
  }
  return r;
}

// Largest L <= wanted such that dim is divisible by 2^L (at least 1).
int fit_levels(int dim, int wanted) {
  int levels = 1;
  while (levels < wanted && dim % (1 << (levels + 1)) == 0) ++levels;
  return levels;
}

}  // namespace

void PolarConfig::validate() const {
  if (dim < 2 || dim > 65536)
    throw_invalid("dim must be in [2, 65536], got " + std::to_string(dim));
  make_polar_shape(dim, levels);  // checks levels and divisibility with a message
  if (static_cast<int>(bits.size()) != levels) {
    throw_invalid("bits must have one entry per level: levels = " + std::to_string(levels) +
                  " but " + std::to_string(bits.size()) + " bit widths were given");
  }
  for (size_t i = 0; i < bits.size(); ++i) {
    if (bits[i] < 1 || bits[i] > 8) {
      throw_invalid("bits[" + std::to_string(i) + "] (level " + std::to_string(i + 1) +
                    ") = " + std::to_string(bits[i]) + " is outside [1, 8]");
    }
  }
  if (!codebooks.empty()) {
    if (static_cast<int>(codebooks.size()) != levels) {
      throw_invalid("codebooks must have one entry per level (" + std::to_string(levels) +
                    "), got " + std::to_string(codebooks.size()));
    }
    for (size_t i = 0; i < codebooks.size(); ++i) {
      if (codebooks[i].level() != static_cast<int>(i) + 1 || codebooks[i].bits() != bits[i]) {
        throw_invalid("codebooks[" + std::to_string(i) + "] is for level " +
                      std::to_string(codebooks[i].level()) + " with " +
                      std::to_string(codebooks[i].bits()) + " bits; expected level " +
                      std::to_string(i + 1) + " with " + std::to_string(bits[i]) + " bits");
      }
    }
  }
  if (rotation == RotationKind::kHadamard && (dim & (dim - 1)) != 0) {
    throw_invalid("the Hadamard rotation needs a power-of-two dim, got " + std::to_string(dim) +
                  "; use rotation 'dense'");
  }
}

size_t PolarConfig::payload_bits() const {
  size_t total = static_cast<size_t>(dim >> levels) * 8 * radius_bytes(radius);
  for (int l = 1; l <= levels; ++l) total += static_cast<size_t>(dim >> l) * bits[l - 1];
  return total;
}

std::vector<std::string> polar_preset_names() {
  return {"paper", "polar37", "polar39", "polar41"};
}

bool is_polar_codec_name(std::string_view name) {
  if (name.rfind("polar-", 0) == 0) return true;
  const auto presets = polar_preset_names();
  return std::find(presets.begin(), presets.end(), name) != presets.end();
}

PolarConfig polar_preset(std::string_view name, int dim) {
  PolarConfig c;
  c.dim = dim;
  c.name = std::string(name);
  std::vector<int> bits;
  if (name.rfind("polar-", 0) == 0) {
    // An explicit allocation: one digit 1..8 per level, level 1 first ("polar-4222" = paper).
    const std::string_view digits = name.substr(6);
    for (const char ch : digits) {
      if (ch < '1' || ch > '8') {
        throw_invalid("codec '" + std::string(name) +
                      "': after 'polar-' give one digit 1..8 per level (bits per angle, level 1 "
                      "first), e.g. polar-4222");
      }
      bits.push_back(ch - '0');
    }
    if (bits.empty() || bits.size() > 16) {
      throw_invalid("codec '" + std::string(name) + "' needs 1..16 levels, one digit each");
    }
  } else if (name == "paper") {
    bits = {4, 2, 2, 2};
  } else if (name == "polar37") {
    bits = {4, 3, 3, 3, 3, 3};
  } else if (name == "polar39") {
    bits = {4, 3, 3, 3, 3};
  } else if (name == "polar41") {
    bits = {4, 4, 4, 4, 4, 4, 4};
  } else {
    std::string known;
    for (const auto& n : polar_preset_names()) known += (known.empty() ? "" : ", ") + n;
    throw_invalid("unknown PolarQuant preset '" + std::string(name) + "'; known presets: " + known +
                  ", or polar-DIGITS (bits per level, e.g. polar-4222)");
  }
  if (dim < 2 || dim % 2 != 0) {
    throw_invalid("codec '" + std::string(name) + "' needs an even dim >= 2, got " +
                  std::to_string(dim));
  }
  // A dim that cannot hold 2^levels uses as many levels as divide it (presets and polar-DIGITS).
  c.levels = fit_levels(dim, static_cast<int>(bits.size()));
  bits.resize(static_cast<size_t>(c.levels));
  c.bits = bits;
  c.validate();
  return c;
}

PolarCodec::PolarCodec(PolarConfig config) : PolarCodec(std::move(config), nullptr) {}

std::unique_ptr<PolarCodec> PolarCodec::with_codebooks(std::vector<Codebook> codebooks) const {
  PolarConfig config = config_;
  config.codebooks = std::move(codebooks);
  return std::unique_ptr<PolarCodec>(new PolarCodec(std::move(config), rotation_));
}

PolarCodec::PolarCodec(PolarConfig config, std::shared_ptr<const Rotation> rotation)
    : config_(std::move(config)), rotation_(std::move(rotation)) {
  config_.validate();
  shape_ = make_polar_shape(config_.dim, config_.levels);
  if (rotation_ == nullptr) {
    rotation_ = std::make_shared<const Rotation>(config_.rotation, config_.dim, config_.seed);
  }
  if (config_.codebooks.empty()) {
    for (int l = 1; l <= config_.levels; ++l)
      codebooks_.push_back(analytic_codebook(l, config_.bits[l - 1]));
  } else {
    codebooks_ = config_.codebooks;
  }
  code_bytes_ = (config_.payload_bits() + 7) / 8;
  boundary_cos_.resize(codebooks_.size());
  boundary_sin_.resize(codebooks_.size());
  constexpr double kPi = 3.14159265358979323846;
  for (size_t l = 0; l < codebooks_.size(); ++l) {
    for (float t : codebooks_[l].boundaries()) {
      double angle = t;
      if (l == 0 && angle >= kPi) {
        angle -= kPi;  // compared in the folded half-plane
      } else if (l == 0) {
        ++level1_upper_;
      }
      boundary_cos_[l].push_back(static_cast<float>(std::cos(angle)));
      boundary_sin_[l].push_back(static_cast<float>(std::sin(angle)));
    }
  }
}

void PolarCodec::quantize_rotated(const float* y, size_t n, uint8_t* indices, float* radii) const {
  const int d = config_.dim;
  const size_t na = static_cast<size_t>(shape_.num_angles());
  const size_t nr = static_cast<size_t>(shape_.num_radii());
  const Codebook& first = codebooks_[0];
  std::vector<float> r(static_cast<size_t>(d / 2));
  for (size_t v = 0; v < n; ++v) {
    const float* in = y + v * d;
    uint8_t* idx = indices + v * na;
    const float* c1 = boundary_cos_[0].data();
    const float* s1 = boundary_sin_[0].data();
    const int nb1 = static_cast<int>(boundary_cos_[0].size());
    const int k1 = first.size();
    const float cos_first = first.cosines()[0], sin_first = first.sines()[0];
    const float cos_last = first.cosines()[k1 - 1], sin_last = first.sines()[k1 - 1];
    for (int j = 0; j < d / 2; ++j) {  // level 1: the full circle
      const float a = in[2 * j], b = in[2 * j + 1];
      // Angle in [0, pi) (upper) or [pi, 2pi) (lower, folded by negating the pair).
      const bool upper = b > 0.0f || (b == 0.0f && a >= 0.0f);
      const float fa = upper ? a : -a, fb = upper ? b : -b;
      const int lo = upper ? 0 : level1_upper_, hi = upper ? level1_upper_ : nb1;
      int q = lo;  // every boundary in [0, pi) lies below an angle of the lower half
      for (int i = lo; i < hi; ++i) q += (fb * c1[i] - fa * s1[i] > 0.0f) ? 1 : 0;
      if (q == 0 || q == k1 - 1) {  // the nearest may lie across 0 = 2pi: compare cosines
        q = a * cos_first + b * sin_first >= a * cos_last + b * sin_last ? 0 : k1 - 1;
      }
      idx[j] = static_cast<uint8_t>(q);
      r[j] = std::sqrt(a * a + b * b);
    }
    for (int l = 2; l <= shape_.levels; ++l) {  // quarter circle: angle > t  <=>  b cos t > a sin t
      const float* bc = boundary_cos_[l - 1].data();
      const float* bs = boundary_sin_[l - 1].data();
      const int nb = static_cast<int>(boundary_cos_[l - 1].size());
      uint8_t* out = idx + shape_.offset_of(l);
      for (int j = 0; j < (d >> l); ++j) {
        const float a = r[2 * j], b = r[2 * j + 1];
        int q = 0;
        for (int i = 0; i < nb; ++i) q += (b * bc[i] - a * bs[i] > 0.0f) ? 1 : 0;
        out[j] = static_cast<uint8_t>(q);
        r[j] = std::sqrt(a * a + b * b);
      }
    }
    for (size_t j = 0; j < nr; ++j) radii[v * nr + j] = round_radius(r[j], config_.radius);
  }
}

void PolarCodec::quantize_rotated_reference(const float* y, size_t n, uint8_t* indices,
                                            float* radii) const {
  const size_t na = static_cast<size_t>(shape_.num_angles());
  const size_t nr = static_cast<size_t>(shape_.num_radii());
  std::vector<float> angles(na);
  for (size_t v = 0; v < n; ++v) {
    float* rad = radii + v * nr;
    polar_forward(shape_, y + v * config_.dim, angles.data(), rad, 1);
    uint8_t* idx = indices + v * na;
    for (int l = 1; l <= shape_.levels; ++l) {
      const Codebook& cb = codebooks_[l - 1];
      const int off = shape_.offset_of(l);
      for (int j = 0; j < shape_.angles_at(l); ++j) {
        idx[off + j] = static_cast<uint8_t>(cb.quantize(angles[off + j]));
      }
    }
    for (size_t j = 0; j < nr; ++j) rad[j] = round_radius(rad[j], config_.radius);
  }
}

void PolarCodec::dequantize_rotated(const uint8_t* indices, const float* radii, size_t n,
                                    float* y) const {
  const int d = config_.dim;
  const size_t na = static_cast<size_t>(shape_.num_angles());
  const size_t nr = static_cast<size_t>(shape_.num_radii());
  for (size_t v = 0; v < n; ++v) {
    const uint8_t* idx = indices + v * na;
    float* out = y + v * d;
    for (size_t j = 0; j < nr; ++j) out[j] = radii[v * nr + j];
    for (int l = shape_.levels; l >= 1; --l) {
      const Codebook& cb = codebooks_[l - 1];
      const uint8_t* code = idx + shape_.offset_of(l);
      for (int j = (d >> l) - 1; j >= 0; --j) {  // in place, as in polar_inverse
        const float rho = out[j];
        out[2 * j] = rho * cb.cosines()[code[j]];
        out[2 * j + 1] = rho * cb.sines()[code[j]];
      }
    }
  }
}

void PolarCodec::encode(const float* x, size_t n, uint8_t* codes) const {
  const size_t d = static_cast<size_t>(config_.dim);
  for (size_t v = 0; v < n; ++v) {
    for (size_t k = 0; k < d; ++k) {
      if (!std::isfinite(x[v * d + k])) {
        throw_invalid("cannot encode vector " + std::to_string(v) + ": coordinate " +
                      std::to_string(k) + " is " + std::to_string(x[v * d + k]) +
                      " (NaN and infinity are not representable)");
      }
    }
  }
  const size_t na = static_cast<size_t>(shape_.num_angles());
  const size_t nr = static_cast<size_t>(shape_.num_radii());
  const int rb = radius_bytes(config_.radius);
  // Validate every vector before writing any output, so that a failure leaves codes untouched.
  std::vector<float> y(n * d), radii(n * nr);
  std::vector<uint8_t> idx(n * na);
  rotation_->forward(x, y.data(), n);
  quantize_rotated(y.data(), n, idx.data(), radii.data());
  for (size_t v = 0; v < n; ++v) {
    for (size_t j = 0; j < nr; ++j) {
      if (!std::isfinite(radii[v * nr + j])) {
        throw_invalid("cannot encode vector " + std::to_string(v) + ": the norm of block " +
                      std::to_string(j) + " overflows the " +
                      std::string(radius_precision_name(config_.radius)) + " radius");
      }
    }
  }
  for (size_t v = 0; v < n; ++v) {
    uint8_t* out = codes + v * code_bytes_;
    for (size_t j = 0; j < nr; ++j) store_radius(out + j * rb, radii[v * nr + j], config_.radius);
    BitWriter bw(out + nr * rb);
    for (int l = 1; l <= shape_.levels; ++l) {
      const int off = shape_.offset_of(l);
      for (int j = 0; j < shape_.angles_at(l); ++j)
        bw.put(idx[v * na + off + j], config_.bits[l - 1]);
    }
    bw.flush();
  }
}

void PolarCodec::decode(const uint8_t* codes, size_t n, float* x) const {
  const size_t d = static_cast<size_t>(config_.dim);
  const size_t na = static_cast<size_t>(shape_.num_angles());
  const size_t nr = static_cast<size_t>(shape_.num_radii());
  const int rb = radius_bytes(config_.radius);
  std::vector<float> radii(n * nr);
  std::vector<uint8_t> idx(n * na);
  for (size_t v = 0; v < n; ++v) {
    const uint8_t* in = codes + v * code_bytes_;
    for (size_t j = 0; j < nr; ++j) {
      const float r = load_radius(in + j * rb, config_.radius);
      if (!std::isfinite(r) || r < 0.0f) {
        throw_format("corrupt PolarQuant code: vector " + std::to_string(v) + " block " +
                     std::to_string(j) + " has radius " + std::to_string(r) +
                     " (a stored radius is finite and non-negative)");
      }
      radii[v * nr + j] = r;
    }
    BitReader br(in + nr * rb);
    for (int l = 1; l <= shape_.levels; ++l) {
      const int off = shape_.offset_of(l);
      for (int j = 0; j < shape_.angles_at(l); ++j) {
        idx[v * na + off + j] = static_cast<uint8_t>(br.get(config_.bits[l - 1]));
      }
    }
  }
  std::vector<float> y(n * d);
  dequantize_rotated(idx.data(), radii.data(), n, y.data());
  rotation_->inverse(y.data(), x, n);
}

}  // namespace polarquant
