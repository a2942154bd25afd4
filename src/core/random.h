// Deterministic random numbers: the same seed gives the same stream on every machine and compiler.
// xoshiro256** (Blackman & Vigna) seeded through splitmix64; Gaussians by the Marsaglia polar
// method with a logarithm written out in plain IEEE arithmetic (no libm, no std:: distributions,
// whose outputs differ between standard libraries).
#pragma once

#include <cstdint>

namespace polarquant {

class Rng {
 public:
  explicit Rng(uint64_t seed);

  uint64_t next_u64();
  // Uniform in [0, 1) with 53 random bits.
  double uniform();
  // Uniform integer in [0, n) (n > 0), without modulo bias.
  uint64_t below(uint64_t n);
  // Standard normal.
  double gaussian();

 private:
  uint64_t s_[4];
  double spare_ = 0.0;
  bool has_spare_ = false;
};

// Natural logarithm for x > 0 using only +, -, *, / and exponent extraction: bit-reproducible.
// Accurate to about 1 ulp of double.
double portable_log(double x);

}  // namespace polarquant
