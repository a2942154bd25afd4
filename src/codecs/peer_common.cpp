// Helpers shared by the peer codecs, and the name table that make_codec consults.
#include "codecs/peer_codecs.h"

#include <polarquant/error.h>
#include <polarquant/half.h>

#include <algorithm>
#include <cmath>

namespace polarquant::codecs {

std::vector<std::string> peer_codec_names() {
  return {"bf16",   "q8_0",   "q8_0h", "q4_0",   "q4_0h",  "kivi4k", "kivi4v",
          "kivi2k", "kivi2v", "qjl",   "turbo4", "turbo3", "turbo2"};
}

std::unique_ptr<Codec> make_peer_codec(std::string_view name, int dim, uint64_t seed) {
  if (name == "bf16") return make_bf16_codec(dim);
  if (name == "q8_0" || name == "q8_0h" || name == "q4_0" || name == "q4_0h") {
    return make_block_codec(name, dim, seed);
  }
  if (name == "kivi2" || name == "kivi4") {
    // A pair name (codec_pair.h) where one codec is wanted: say which role names exist.
    const std::string n(name);
    throw_invalid("'" + n + "' names a key/value pair: use '" + n + "k' for keys and '" + n +
                  "v' for values (KvCacheOptions key_codec / value_codec)");
  }
  if (name == "kivi2k") return make_kivi_key_codec(2, dim);
  if (name == "kivi4k") return make_kivi_key_codec(4, dim);
  if (name == "kivi2v") return make_kivi_value_codec(2, dim);
  if (name == "kivi4v") return make_kivi_value_codec(4, dim);
  // QJL with m = 2d projections: 2 bits per coordinate plus the fp16 norm, the key budget of the
  // QJL paper's Llama runs (256 sign bits for d = 128).
  if (name == "qjl") return make_qjl_codec(2 * dim, dim, seed);
  if (name == "turbo2") return make_turbo_codec(2, dim, seed);
  if (name == "turbo3") return make_turbo_codec(3, dim, seed);
  if (name == "turbo4") return make_turbo_codec(4, dim, seed);
  return nullptr;
}

void check_finite(const char* codec, const float* x, size_t n, int dim) {
  for (size_t i = 0; i < n; ++i) {
    for (int j = 0; j < dim; ++j) {
      if (!std::isfinite(x[i * static_cast<size_t>(dim) + static_cast<size_t>(j)])) {
        throw_invalid(std::string(codec) + " encode: vector " + std::to_string(i) +
                      ", coordinate " + std::to_string(j) +
                      " is not finite; expected finite values");
      }
    }
  }
}

uint16_t checked_half(float v, const char* codec, const char* what, size_t group) {
  const uint16_t h = float_to_half(v);
  if ((h & 0x7c00u) == 0x7c00u) {
    throw_invalid(std::string(codec) + " encode: group " + std::to_string(group) + ": " + what +
                  " " + std::to_string(v) + " overflows fp16 (|value| <= 65504 expected)");
  }
  return h;
}

float stored_half(const uint8_t* p, const char* codec, const char* what, size_t group) {
  const uint16_t h = static_cast<uint16_t>(p[0] | (static_cast<unsigned>(p[1]) << 8));
  if ((h & 0x7c00u) == 0x7c00u) {
    throw_format(std::string(codec) + " decode: group " + std::to_string(group) + ": stored " +
                 what + " is not finite; the codes cannot come from encode");
  }
  return half_to_float(h);
}

namespace {
double normal_pdf(double x) {
  return std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI);
}
double normal_cdf(double x) {
  return 0.5 * std::erfc(-x / std::sqrt(2.0));
}
}  // namespace

std::vector<double> gaussian_lloyd_max(int bits) {
  if (bits < 1 || bits > 8) {
    throw_invalid("gaussian_lloyd_max: bits " + std::to_string(bits) + " outside 1..8");
  }
  const int k = 1 << bits;
  // Start from a uniform grid over +-3 sigma; Lloyd's iteration on a log-concave density converges
  // to the unique optimum from any start. The iteration count is fixed, so the result is the same
  // on every run.
  std::vector<double> c(static_cast<size_t>(k));
  for (int i = 0; i < k; ++i) c[static_cast<size_t>(i)] = -3.0 + 6.0 * (i + 0.5) / k;
  std::vector<double> edge(static_cast<size_t>(k) + 1);
  for (int iter = 0; iter < 20000; ++iter) {
    edge[0] = -INFINITY;
    edge[static_cast<size_t>(k)] = INFINITY;
    for (int i = 1; i < k; ++i) {
      edge[static_cast<size_t>(i)] =
          0.5 * (c[static_cast<size_t>(i) - 1] + c[static_cast<size_t>(i)]);
    }
    double change = 0.0;
    for (int i = 0; i < k; ++i) {
      const double a = edge[static_cast<size_t>(i)], b = edge[static_cast<size_t>(i) + 1];
      const double mass = normal_cdf(b) - normal_cdf(a);
      // Conditional mean of N(0,1) on [a, b]: (pdf(a) - pdf(b)) / mass.
      const double pa = std::isfinite(a) ? normal_pdf(a) : 0.0;
      const double pb = std::isfinite(b) ? normal_pdf(b) : 0.0;
      const double next = mass > 0.0 ? (pa - pb) / mass : c[static_cast<size_t>(i)];
      change = std::max(change, std::fabs(next - c[static_cast<size_t>(i)]));
      c[static_cast<size_t>(i)] = next;
    }
    if (change < 1e-13) break;
  }
  return c;
}

double gaussian_lloyd_max_mse(const std::vector<double>& centroids) {
  const size_t k = centroids.size();
  double second_moment = 0.0;
  for (size_t i = 0; i < k; ++i) {
    const double a = i == 0 ? -INFINITY : 0.5 * (centroids[i - 1] + centroids[i]);
    const double b = i + 1 == k ? INFINITY : 0.5 * (centroids[i] + centroids[i + 1]);
    second_moment += (normal_cdf(b) - normal_cdf(a)) * centroids[i] * centroids[i];
  }
  // At a Lloyd-Max fixed point each centroid is its cell's mean, so MSE = E[x^2] - E[c(x)^2].
  return 1.0 - second_moment;
}

}  // namespace polarquant::codecs
