#include "eval/distortion.h"

#include <algorithm>
#include <cmath>

namespace polarquant {

double nmse(const float* x, const float* x_hat, size_t count) {
  double err = 0.0, ref = 0.0;
  for (size_t i = 0; i < count; ++i) {
    const double e = static_cast<double>(x[i]) - x_hat[i];
    err += e * e;
    ref += static_cast<double>(x[i]) * x[i];
  }
  return ref > 0.0 ? err / ref : 0.0;
}

double inner_product_error(const float* x, const float* x_hat, size_t n, const float* q, size_t n_q,
                           int dim) {
  const size_t d = static_cast<size_t>(dim);
  double err = 0.0, ref = 0.0;
  for (size_t a = 0; a < n_q; ++a) {
    const float* qa = q + a * d;
    for (size_t i = 0; i < n; ++i) {
      double exact = 0.0, approx = 0.0;
      for (size_t j = 0; j < d; ++j) {
        exact += static_cast<double>(qa[j]) * x[i * d + j];
        approx += static_cast<double>(qa[j]) * x_hat[i * d + j];
      }
      err += (exact - approx) * (exact - approx);
      ref += exact * exact;
    }
  }
  return ref > 0.0 ? std::sqrt(err / ref) : 0.0;
}

void attend(const float* q, const float* k, const float* v, size_t n, int dim, double scale,
            double* probs, double* out) {
  const size_t d = static_cast<size_t>(dim);
  double max_score = -INFINITY;
  for (size_t i = 0; i < n; ++i) {
    double s = 0.0;
    for (size_t j = 0; j < d; ++j) s += static_cast<double>(q[j]) * k[i * d + j];
    probs[i] = s * scale;
    max_score = std::max(max_score, probs[i]);
  }
  double total = 0.0;
  for (size_t i = 0; i < n; ++i) {
    probs[i] = std::exp(probs[i] - max_score);
    total += probs[i];
  }
  std::fill(out, out + d, 0.0);
  for (size_t i = 0; i < n; ++i) {
    probs[i] /= total;
    for (size_t j = 0; j < d; ++j) out[j] += probs[i] * v[i * d + j];
  }
}

double kl_divergence(const double* p, const double* p_hat, size_t n) {
  double kl = 0.0;
  for (size_t i = 0; i < n; ++i) {
    if (p[i] > 0.0) kl += p[i] * std::log(p[i] / std::max(p_hat[i], 1e-300));
  }
  // Rounding can make a tiny true KL come out slightly negative; KL is never below zero.
  return std::max(kl, 0.0);
}

void AttentionErrorStats::add(const double* probs, const double* probs_hat, size_t n,
                              const double* out, const double* out_hat, int dim) {
  for (int j = 0; j < dim; ++j) {
    out_err_ += (out[j] - out_hat[j]) * (out[j] - out_hat[j]);
    out_ref_ += out[j] * out[j];
  }
  kl_sum_ += kl_divergence(probs, probs_hat, n);
  ++queries_;
}

double AttentionErrorStats::output_error() const {
  return out_ref_ > 0.0 ? std::sqrt(out_err_ / out_ref_) : 0.0;
}

double AttentionErrorStats::mean_kl() const {
  return queries_ > 0 ? kl_sum_ / static_cast<double>(queries_) : 0.0;
}

}  // namespace polarquant
