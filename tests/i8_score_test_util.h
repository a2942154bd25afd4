// Shared parts of the tests of the AVX2 integer score kernels (attention_avx2_i8_test.cpp for
// `paper`, attention_avx2_i8_polar_test.cpp for the other allocations): pages of Gaussian keys, and
// the precision cost of integer scores against the float scalar kernel, measured on the attention
// output: softmax over the scores of all tokens, then the probabilities times random values, NMSE
// against the same with the float scores.
#pragma once

#include <gtest/gtest.h>
#include <polarquant/polar_codec.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <vector>

#include "attention/kernels.h"
#include "cache/page_format.h"
#include "cache_test_util.h"

namespace polarquant::testing {

// The integer kernel under test: scores of one page's tokens 0..n-1 into scores (stride s_stride).
using I8ScoreFn = std::function<void(const PolarTables&, const uint8_t* region, size_t n, int g,
                                     float* scores, size_t s_stride)>;

// A scalar twin's signature (scalar_score_paper_i8, scalar_score_polar_i8).
using I8TwinFn = void (*)(const PolarTables&, const uint8_t*, size_t slot, size_t n, int g,
                          float* scores, size_t s_stride);

// The AVX2 set's score_polar when `avx2` is given, else `twin`, as an I8ScoreFn.
inline I8ScoreFn avx2_or_twin(const KernelSet* avx2, I8TwinFn twin) {
  return [avx2, twin](const PolarTables& t, const uint8_t* region, size_t n, int g, float* out,
                      size_t stride) {
    if (avx2 != nullptr) {
      avx2->score_polar(t, region, 0, n, g, out, stride);
    } else {
      twin(t, region, 0, n, g, out, stride);
    }
  };
}

struct I8Pages {
  std::unique_ptr<PolarCodec> codec;
  std::unique_ptr<PolarPageFormat> format;
  std::vector<std::vector<uint8_t>> bytes;  // one region per page
};

// `pages` pages of page_tokens Gaussian keys (seeds seed, seed + 1, ...), codec bits per level.
inline I8Pages make_i8_pages(int dim, const std::vector<int>& bits, RadiusPrecision radius,
                             int page_tokens, int pages, uint64_t seed) {
  I8Pages p;
  PolarConfig config;
  config.dim = dim;
  config.levels = static_cast<int>(bits.size());
  config.bits = bits;
  config.radius = radius;
  config.rotation = RotationKind::kHadamard;
  p.codec = std::make_unique<PolarCodec>(config);
  p.format = std::make_unique<PolarPageFormat>(*p.codec, page_tokens);
  for (int i = 0; i < pages; ++i) {
    p.bytes.emplace_back(p.format->head_bytes(), 0);
    const auto x = gaussian(static_cast<size_t>(page_tokens) * dim, seed + i);
    p.format->store(x.data(), page_tokens, 1, p.bytes.back().data(), p.format->head_bytes(), 0);
  }
  return p;
}

// Page 0 refilled with keys that put all of a block's energy into one level-3 node (token t: the 8
// coordinates of node t mod dim / 8 after the rotation, all +-1): with queries along the largest
// table entries they take the integer kernels' int16 node sums near their bound.
inline void store_one_node_keys(I8Pages& pages, int dim, int page_tokens) {
  std::vector<float> rotated(static_cast<size_t>(page_tokens) * dim, 0.0f);
  for (int t = 0; t < page_tokens; ++t) {
    const int node = t % (dim / 8);
    for (int j = 0; j < 8; ++j) rotated[t * dim + node * 8 + j] = (t % 3 == 0 ? -1.0f : 1.0f);
  }
  std::vector<float> x(rotated.size());
  pages.codec->rotation().inverse(rotated.data(), x.data(), page_tokens);
  pages.format->store(x.data(), page_tokens, 1, pages.bytes[0].data(), pages.format->head_bytes(),
                      0);
}

// Scores of store_one_node_keys' page (d = 128, 32 tokens, 4 heads of all-ones queries, head 1
// negated) from the AVX2 set and from `twin` (the integer kernel's scalar twin): equal bit for bit,
// within 1% of the float kernel's spread; returns the largest node sum reached, in the kernels'
// integer units (token scale sqrt(8) / 127 times the head's table scale).
inline double check_node_sums_near_the_bound(const KernelSet& avx2, const std::vector<int>& bits,
                                             const I8ScoreFn& twin) {
  const int dim = 128, page_tokens = 32, g = 4;
  I8Pages pages = make_i8_pages(dim, bits, RadiusPrecision::kFp16, page_tokens, 1, 31);
  store_one_node_keys(pages, dim, page_tokens);
  std::vector<float> q(static_cast<size_t>(g) * dim, 1.0f);
  for (int j = 0; j < dim; ++j) q[dim + j] = -1.0f;  // head 1: the opposite sign
  PolarTables tables;
  build_polar_tables(*pages.format, q.data(), g, tables, true);
  const uint8_t* region = pages.bytes[0].data();
  std::vector<float> want(g * 32), got(g * 32), exact(g * 32);
  twin(tables, region, page_tokens, g, want.data(), 32);
  avx2.score_polar(tables, region, 0, page_tokens, g, got.data(), 32);
  scalar_kernels().score_polar(tables, region, 0, page_tokens, g, exact.data(), 32);
  double spread = 0.0;
  for (float e : exact) spread = std::max(spread, std::fabs(double{e}));
  double largest = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(want[i], got[i]) << "score " << i;
    EXPECT_NEAR(want[i], exact[i], 0.01 * spread) << "score " << i;
    const double units = std::sqrt(8.0) / 127.0 * tables.a1_i8_scale[i / 32];
    largest = std::max(largest, std::fabs(double{want[i]}) / units);
  }
  std::printf("largest node sum %.0f (int16 bound of the kernel: 32512)\n", largest);
  return largest;
}

// Softmax over all tokens of scores[h * stride + t], then sum_t p_t v_t: g x dim outputs.
inline std::vector<double> attend(const std::vector<float>& scores, size_t stride, int g,
                                  size_t tokens, const std::vector<float>& v, int dim) {
  std::vector<double> out(static_cast<size_t>(g) * dim, 0.0);
  for (int h = 0; h < g; ++h) {
    double m = -1e300, l = 0.0;
    for (size_t t = 0; t < tokens; ++t) m = std::max(m, double{scores[h * stride + t]});
    for (size_t t = 0; t < tokens; ++t) {
      const double p = std::exp(scores[h * stride + t] - m);
      l += p;
      for (int j = 0; j < dim; ++j) out[h * dim + j] += p * v[t * dim + j];
    }
    for (int j = 0; j < dim; ++j) out[h * dim + j] /= l;
  }
  return out;
}

inline double output_nmse(const std::vector<double>& want, const std::vector<double>& got) {
  double err = 0.0, ref = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    err += (got[i] - want[i]) * (got[i] - want[i]);
    ref += want[i] * want[i];
  }
  return err / ref;
}

// Squared error over the variance of `want`.
inline double score_nmse(const std::vector<float>& want, const std::vector<float>& got) {
  double mean = 0.0, var = 0.0, err = 0.0;
  for (float x : want) mean += x / want.size();
  for (size_t i = 0; i < want.size(); ++i) {
    var += (want[i] - mean) * (want[i] - mean);
    err += (double{got[i]} - want[i]) * (double{got[i]} - want[i]);
  }
  return err / var;
}

struct I8Cost {
  double score_nmse, output_nmse;              // integer scores against the float kernel
  double codec_score_nmse, codec_output_nmse;  // the float kernel against unquantized keys
};

// Integer scores against the float scalar kernel over 8 pages of 64 Gaussian keys (seeds 21..28),
// g query heads scaled so that the scores spread like a trained model's (standard deviation
// ~2-3); `corrupt` may change the built tables first (to show that the bounds mean something).
inline I8Cost i8_precision_cost(int dim, int g, const std::vector<int>& bits,
                                const I8ScoreFn& integer_scores,
                                const std::function<void(PolarTables&)>& corrupt = {}) {
  const int page_tokens = 64, n_pages = 8;
  const size_t tokens = static_cast<size_t>(page_tokens) * n_pages;
  const I8Pages pages = make_i8_pages(dim, bits, RadiusPrecision::kFp16, page_tokens, n_pages, 21);
  const auto q = gaussian(static_cast<size_t>(g) * dim, 22, 2.5f / std::sqrt(float(dim)));
  const auto v = gaussian(tokens * dim, 23);
  PolarTables tables;
  build_polar_tables(*pages.format, q.data(), g, tables, true);
  if (corrupt) corrupt(tables);
  std::vector<float> sf(g * tokens), si(g * tokens), sx(g * tokens);
  for (int p = 0; p < n_pages; ++p) {
    const auto x = gaussian(static_cast<size_t>(page_tokens) * dim, 21 + p);  // as make_i8_pages
    std::vector<float> y(x.size());
    pages.codec->rotation().forward(x.data(), y.data(), page_tokens);
    for (int h = 0; h < g; ++h) {
      for (int t = 0; t < page_tokens; ++t) {
        double dot = 0.0;
        for (int j = 0; j < dim; ++j) dot += double{q[h * dim + j]} * y[t * dim + j];
        sx[h * tokens + p * page_tokens + t] = static_cast<float>(dot);
      }
    }
    const uint8_t* region = pages.bytes[p].data();
    const size_t at = static_cast<size_t>(p) * page_tokens;
    scalar_kernels().score_polar(tables, region, 0, page_tokens, g, sf.data() + at, tokens);
    integer_scores(tables, region, page_tokens, g, si.data() + at, tokens);
  }
  const auto out_f = attend(sf, tokens, g, tokens, v, dim);
  return {score_nmse(sf, si), output_nmse(out_f, attend(si, tokens, g, tokens, v, dim)),
          score_nmse(sx, sf), output_nmse(attend(sx, tokens, g, tokens, v, dim), out_f)};
}

}  // namespace polarquant::testing
