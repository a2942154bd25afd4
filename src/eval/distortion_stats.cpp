#include "eval/distortion_stats.h"

#include <polarquant/error.h>

#include <cmath>
#include <string>

#include "eval/synthetic.h"

namespace polarquant {

CodecStats measure_codec(const Codec& codec, const std::vector<float>& x, uint64_t query_seed) {
  const size_t d = static_cast<size_t>(codec.dim());
  const size_t group = static_cast<size_t>(codec.group_size());
  if (x.size() % (d * group) != 0) {
    throw_invalid("measure_codec: " + std::to_string(x.size()) +
                  " values are not whole groups of " + std::to_string(group) +
                  " vectors of dimension " + std::to_string(d));
  }
  const size_t n = x.size() / d;
  std::vector<uint8_t> codes(n / group * codec.group_bytes());
  std::vector<float> xh(x.size());
  codec.encode(x.data(), n / group, codes.data());
  codec.decode(codes.data(), n / group, xh.data());

  CodecStats s;
  s.bits_per_coordinate = codec.bits_per_coordinate();
  s.compression_vs_fp16 = 16.0 / s.bits_per_coordinate;
  double err = 0.0, ref = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double e = static_cast<double>(x[i]) - xh[i];
    err += e * e;
    ref += static_cast<double>(x[i]) * x[i];
  }
  s.nmse = ref > 0.0 ? err / ref : 0.0;
  // One Gaussian query per vector.
  // Mixed so that the queries never coincide with data generated from the same small seed.
  const std::vector<float> q =
      gaussian_data(n, static_cast<int>(d), query_seed ^ 0x71756572795f7365ull);
  double ip_err = 0.0, ip_ref = 0.0;
  for (size_t v = 0; v < n; ++v) {
    double a = 0.0, b = 0.0;
    for (size_t k = 0; k < d; ++k) {
      a += static_cast<double>(q[v * d + k]) * x[v * d + k];
      b += static_cast<double>(q[v * d + k]) * xh[v * d + k];
    }
    ip_err += (a - b) * (a - b);
    ip_ref += a * a;
  }
  s.inner_product_error = ip_ref > 0.0 ? std::sqrt(ip_err / ip_ref) : 0.0;
  return s;
}

}  // namespace polarquant
