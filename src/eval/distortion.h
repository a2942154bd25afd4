// Error measures for comparing a codec's reconstruction (x_hat) with the original vectors (x):
// reconstruction NMSE, inner-product error, and the error of softmax attention computed on the
// reconstructed keys and values. All sums run in double.
#pragma once

#include <cstddef>
#include <vector>

namespace polarquant {

// sum ||x - x_hat||^2 / sum ||x||^2 over `count` floats (0 when x is all zero).
double nmse(const float* x, const float* x_hat, size_t count);

// Relative inner-product error over every (query, vector) pair: RMS(<q, x> - <q, x_hat>) /
// RMS(<q, x>). x and x_hat: n x dim; q: n_q x dim.
double inner_product_error(const float* x, const float* x_hat, size_t n, const float* q, size_t n_q,
                           int dim);

// Softmax attention of one query over n keys/values (n x dim): probs[j] = softmax(scale * <q, k_j>)
// and out = sum_j probs[j] v_j. probs has n entries, out dim.
void attend(const float* q, const float* k, const float* v, size_t n, int dim, double scale,
            double* probs, double* out);

// KL(p || p_hat) = sum p log(p / p_hat) of two distributions over n outcomes. p_hat entries below
// 1e-300 are treated as 1e-300 (a softmax of finite scores is never exactly 0 unless it
// underflows).
double kl_divergence(const double* p, const double* p_hat, size_t n);

// Accumulates attention errors over many queries: the output's relative error
// sqrt(sum ||o - o_hat||^2 / sum ||o||^2) and the mean softmax KL(p || p_hat).
class AttentionErrorStats {
 public:
  void add(const double* probs, const double* probs_hat, size_t n, const double* out,
           const double* out_hat, int dim);
  double output_error() const;
  double mean_kl() const;
  size_t queries() const { return queries_; }

 private:
  double out_err_ = 0.0, out_ref_ = 0.0, kl_sum_ = 0.0;
  size_t queries_ = 0;
};

}  // namespace polarquant
