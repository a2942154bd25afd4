// QJL keys (Zandieh et al. 2024): the signs of m seeded Gaussian projections of the key plus its
// norm. Decoding returns k_hat = sqrt(pi/2) / m * ||k|| * S^T sign(S k), whose inner product with a
// query q is QJL's unbiased score estimator sqrt(pi/2)/m * ||k|| * <S q, sign(S k)>: for a row s of
// S, E[<s, q> sign(<s, k>)] = sqrt(2/pi) <q, k> / ||k||. So the generic decode-then-attend path
// computes exactly the estimator. k_hat is not a small-error reconstruction of k (NMSE near
// (pi/2 - 1) d / m + ...); QJL is judged on scores, not on NMSE.
//
// Layout per vector: fp16 norm, then m sign bits LSB-first (bit i set when (S k)_i >= 0), padded to
// a byte. S (m x d, row-major) has N(0, 1) entries from Rng(seed) in row order.
#include <polarquant/error.h>
#include <polarquant/half.h>

#include "codecs/bit_pack.h"
#include "codecs/peer_codecs.h"
#include "core/random.h"

#include <cmath>
#include <vector>

namespace polarquant::codecs {
namespace {

// Distinguishes the projection's stream from the rotations drawn from the same user seed.
constexpr uint64_t kProjectionSalt = 0x516a'4c00'0000'0001ull;

class QjlCodec final : public Codec {
 public:
  QjlCodec(int m, int dim, uint64_t seed) : m_(m), dim_(dim) {
    Rng rng(seed ^ kProjectionSalt);
    projection_.resize(static_cast<size_t>(m) * static_cast<size_t>(dim));
    for (float& s : projection_) s = static_cast<float>(rng.gaussian());
  }
  std::string name() const override { return "qjl"; }
  int dim() const override { return dim_; }
  size_t group_bytes() const override { return 2 + packed_bytes(static_cast<size_t>(m_), 1); }
  int projections() const { return m_; }

  void encode(const float* x, size_t n, uint8_t* codes) const override {
    check_finite("qjl", x, n, dim_);
    const size_t d = static_cast<size_t>(dim_);
    std::vector<uint16_t> norms(n);
    for (size_t i = 0; i < n; ++i) {
      double sq = 0.0;
      for (size_t j = 0; j < d; ++j) sq += static_cast<double>(x[i * d + j]) * x[i * d + j];
      const double norm = std::sqrt(sq);
      if (!(norm <= 65504.0)) {
        throw_invalid("qjl encode: vector " + std::to_string(i) + ": norm " + std::to_string(norm) +
                      " overflows fp16 (<= 65504 expected)");
      }
      norms[i] = checked_half(static_cast<float>(norm), "qjl", "norm", i);
    }
    std::vector<uint8_t> signs(static_cast<size_t>(m_));
    for (size_t i = 0; i < n; ++i) {
      uint8_t* out = codes + i * group_bytes();
      store_u16(out, norms[i]);
      for (size_t r = 0; r < signs.size(); ++r) {
        const float* row = projection_.data() + r * d;
        float dot = 0.0f;
        for (size_t j = 0; j < d; ++j) dot += row[j] * x[i * d + j];
        signs[r] = dot >= 0.0f ? 1 : 0;
      }
      pack_bits(signs.data(), signs.size(), 1, out + 2);
    }
  }

  void decode(const uint8_t* codes, size_t n, float* x) const override {
    const size_t d = static_cast<size_t>(dim_);
    std::vector<uint8_t> signs(static_cast<size_t>(m_));
    std::vector<double> acc(d);
    for (size_t i = 0; i < n; ++i) {
      const uint8_t* in = codes + i * group_bytes();
      const float norm = stored_half(in, "qjl", "norm", i);
      if (norm < 0.0f) {
        throw_format("qjl decode: vector " + std::to_string(i) +
                     ": negative norm; the codes cannot come from encode");
      }
      unpack_bits(in + 2, signs.size(), 1, signs.data());
      std::fill(acc.begin(), acc.end(), 0.0);
      for (size_t r = 0; r < signs.size(); ++r) {
        const float* row = projection_.data() + r * d;
        const double s = signs[r] ? 1.0 : -1.0;
        for (size_t j = 0; j < d; ++j) acc[j] += s * row[j];
      }
      const double factor = std::sqrt(M_PI / 2.0) / m_ * norm;
      for (size_t j = 0; j < d; ++j) x[i * d + j] = static_cast<float>(factor * acc[j]);
    }
  }

 private:
  int m_;
  int dim_;
  std::vector<float> projection_;
};

}  // namespace

std::unique_ptr<Codec> make_qjl_codec(int projections, int dim, uint64_t seed) {
  if (dim < 1) throw_invalid("qjl: dim " + std::to_string(dim) + " must be >= 1");
  if (projections < 1 || projections > 65536) {
    throw_invalid("qjl: projections " + std::to_string(projections) + " must be in 1..65536");
  }
  return std::make_unique<QjlCodec>(projections, dim, seed);
}

}  // namespace polarquant::codecs
