// The scalar kernel set: plain loops over the same data layouts as the SIMD sets, and the reference
// the SIMD sets are tested against.
#include <polarquant/half.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "attention/kernels.h"
#include "attention/polar_page_access.h"

namespace polarquant {
namespace {

void score_f32(const float* q, int g, int dim, const float* rows, size_t stride, size_t n,
               float* scores, size_t s_stride) {
  for (size_t t = 0; t < n; ++t) {
    const float* row = rows + t * stride;
    for (int h = 0; h < g; ++h) {
      float s = 0.0f;
      for (int j = 0; j < dim; ++j) s += q[h * dim + j] * row[j];
      scores[h * s_stride + t] = s;
    }
  }
}

void score_f16(const float* q, int g, int dim, const uint16_t* rows, size_t stride, size_t n,
               float* scores, size_t s_stride) {
  std::vector<float> row(dim);
  for (size_t t = 0; t < n; ++t) {
    for (int j = 0; j < dim; ++j) row[j] = half_to_float(rows[t * stride + j]);
    score_f32(q, g, dim, row.data(), 0, 1, scores + t, s_stride);
  }
}

void value_f32(const float* p, size_t p_stride, int g, int dim, const float* rows, size_t stride,
               size_t n, float* acc) {
  for (size_t t = 0; t < n; ++t) {
    const float* row = rows + t * stride;
    for (int h = 0; h < g; ++h) {
      const float w = p[h * p_stride + t];
      for (int j = 0; j < dim; ++j) acc[h * dim + j] += w * row[j];
    }
  }
}

void value_f16(const float* p, size_t p_stride, int g, int dim, const uint16_t* rows, size_t stride,
               size_t n, float* acc) {
  std::vector<float> row(dim);
  for (size_t t = 0; t < n; ++t) {
    for (int j = 0; j < dim; ++j) row[j] = half_to_float(rows[t * stride + j]);
    value_f32(p + t, p_stride, g, dim, row.data(), 0, 1, acc);
  }
}

// Top-down decode of one block of one token from level `levels` down to level `stop` (stop = 2
// leaves the level-1 pair radii, stop = 1 the rotated coordinates). vals needs 2^levels floats.
void decode_block(const PolarTables& tb, const uint8_t* region, size_t s, int b, int stop,
                  float* vals) {
  const PolarPageLayout& layout = *tb.layout;
  vals[0] = polar_radius(layout, tb.radius, region, b, s);
  int count = 1;
  for (int level = tb.levels; level >= stop; --level, count *= 2) {
    for (int k = count - 1; k >= 0; --k) {  // backwards: children overwrite parents in place
      const int node = b * count + k;
      const unsigned c = polar_code(layout, region, level, node, s, tb.bits[level - 1]);
      const float r = vals[k];
      vals[2 * k] = r * tb.cos[level - 1][c];
      vals[2 * k + 1] = r * tb.sin[level - 1][c];
    }
  }
}

void score_polar(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                 float* scores, size_t s_stride) {
  const int block = 1 << tb.levels;
  const int blocks = tb.dim / block;
  const int pairs_per_block = block / 2;
  const int size1 = PolarTables::table_size(tb.bits[0]);
  std::vector<float> f(block);
  for (size_t t = 0; t < n; ++t) {
    const size_t s = slot + t;
    for (int h = 0; h < g; ++h) scores[h * s_stride + t] = 0.0f;
    for (int b = 0; b < blocks; ++b) {
      decode_block(tb, region, s, b, 2, f.data());
      for (int k = 0; k < pairs_per_block; ++k) {
        const int pair = b * pairs_per_block + k;
        const unsigned c = polar_code(*tb.layout, region, 1, pair, s, tb.bits[0]);
        for (int h = 0; h < g; ++h) {
          const float* a1 = &tb.a1[(static_cast<size_t>(h) * (tb.dim / 2) + pair) * size1];
          scores[h * s_stride + t] += f[k] * a1[c];
        }
      }
    }
  }
}

void value_polar(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                 const float* p, size_t p_stride, float* acc_lanes) {
  scalar_value_polar(tb, region, slot, n, g, p, p_stride, acc_lanes, 16);
}

float softmax(float* s, size_t n, float* m, float* l) {
  float m_new = *m;
  for (size_t t = 0; t < n; ++t) m_new = std::max(m_new, s[t]);
  const float alpha = *m == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(*m - m_new);
  float sum = 0.0f;
  for (size_t t = 0; t < n; ++t) {
    s[t] = std::exp(s[t] - m_new);
    sum += s[t];
  }
  *m = m_new;
  *l = *l * alpha + sum;
  return alpha;
}

}  // namespace

void scalar_value_polar(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n, int g,
                        const float* p, size_t p_stride, float* acc_lanes, int lanes) {
  const int block = 1 << tb.levels;
  const int blocks = tb.dim / block;
  std::vector<float> y(block);
  for (size_t t = 0; t < n; ++t) {
    const size_t s = slot + t;
    const size_t lane = s % static_cast<size_t>(lanes);
    for (int b = 0; b < blocks; ++b) {
      decode_block(tb, region, s, b, 1, y.data());
      for (int h = 0; h < g; ++h) {
        const float w = p[h * p_stride + t];
        float* acc = acc_lanes + (static_cast<size_t>(h) * tb.dim + b * block) * lanes + lane;
        for (int j = 0; j < block; ++j) acc[j * lanes] += w * y[j];
      }
    }
  }
}

void scalar_score_paper_i8(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n,
                           int g, float* scores, size_t s_stride) {
  const PolarPageLayout& layout = *tb.layout;
  const int blocks = tb.dim / 16;
  const size_t couples = static_cast<size_t>(tb.dim / 4);
  std::vector<int32_t> sum(g);
  for (size_t t = 0; t < n; ++t) {
    const size_t s = slot + t;
    float rmax = 0.0f;
    for (int b = 0; b < blocks; ++b) {
      rmax = std::max(rmax, polar_radius(layout, tb.radius, region, b, s));
    }
    const float inv = rmax > 0.0f ? 127.0f / rmax : 0.0f;
    std::fill(sum.begin(), sum.end(), 0);
    for (int b = 0; b < blocks; ++b) {
      // decode_block's products from the scaled radius: r' t4, then t3, then t2.
      float f[8];
      f[0] = polar_radius(layout, tb.radius, region, b, s) * inv;
      for (int level = 4, count = 1; level >= 2; --level, count *= 2) {
        for (int k = count - 1; k >= 0; --k) {
          const unsigned c = polar_code(layout, region, level, b * count + k, s, 2);
          const float r = f[k];
          f[2 * k] = r * tb.cos[level - 1][c];
          f[2 * k + 1] = r * tb.sin[level - 1][c];
        }
      }
      for (int k = 0; k < 8; ++k) {
        const int pair = 8 * b + k;
        const int32_t fq = static_cast<int32_t>(std::nearbyint(f[k]));
        const unsigned c = polar_code(layout, region, 1, pair, s, 4);
        for (int h = 0; h < g; ++h) {
          const int32_t a = tb.a1_i8[(h * couples + pair / 2) * 16 + 8 * (pair % 2) + (c & 7)];
          sum[h] += fq * (c & 8 ? -a : a);
        }
      }
    }
    for (int h = 0; h < g; ++h) {
      scores[h * s_stride + t] = static_cast<float>(sum[h]) * (rmax / 127.0f) * tb.a1_i8_scale[h];
    }
  }
}

bool polar_i8_q15_levels(const PolarTables& tb) {
  return tb.levels >= 3 && tb.bits[1] == 4 && tb.bits[2] == 4 && !tb.a1_i8_pair.empty();
}

bool polar_i8_scores_apply(const PolarTables& tb, int g) {
  const bool width = tb.bits[0] == 4 || (tb.bits[0] == 5 && tb.level1_half_turn);
  return tb.levels >= 3 && tb.levels <= 8 && width && tb.dim % (1 << tb.levels) == 0 &&
         tb.a1_i8_pair.size() >= static_cast<size_t>(g) * (tb.dim / 2) * 16 &&
         tb.a1_i8_scale.size() >= static_cast<size_t>(g);
}

void scalar_score_polar_i8(const PolarTables& tb, const uint8_t* region, size_t slot, size_t n,
                           int g, float* scores, size_t s_stride) {
  const PolarPageLayout& layout = *tb.layout;
  const int block = 1 << tb.levels, blocks = tb.dim / block;
  const int nodes3 = block / 8;  // level-3 nodes per block
  const size_t pairs = static_cast<size_t>(tb.dim / 2);
  const bool q15 = polar_i8_q15_levels(tb);
  // vpmulhrsw: the product of two int16 in Q15, rounded.
  const auto mulhrs = [](int32_t a, int32_t b) { return (a * b + 0x4000) >> 15; };
  std::vector<float> r3(static_cast<size_t>(tb.dim / 8)), vals(block);
  std::vector<int32_t> sum(g);
  for (size_t t = 0; t < n; ++t) {
    const size_t s = slot + t;
    // decode_block's products down to the level-3 radii, and the token's largest of them.
    float rmax = 0.0f;
    for (int b = 0; b < blocks; ++b) {
      decode_block(tb, region, s, b, 4, vals.data());
      for (int k = 0; k < nodes3; ++k) {
        r3[b * nodes3 + k] = vals[k];
        rmax = std::max(rmax, vals[k]);
      }
    }
    const float inv = rmax > 0.0f ? (q15 ? 16256.0f : 127.0f) / rmax : 0.0f;
    std::fill(sum.begin(), sum.end(), 0);
    for (int node = 0; node < tb.dim / 8; ++node) {
      // Levels 3 and 2 from the scaled radius: the factors of the node's 4 pairs.
      const float r = r3[node] * inv;
      const unsigned c3 = polar_code(layout, region, 3, node, s, tb.bits[2]);
      const float child[2] = {r * tb.cos[2][c3], r * tb.sin[2][c3]};
      // With q15 (levels 3 and 2 of 4 bits, so c3 < 16): the radius in Q7 times the Q15 cos/sin.
      int32_t child_q[2] = {0, 0};
      if (q15) {
        const int32_t x = static_cast<int32_t>(std::nearbyint(r));
        child_q[0] = mulhrs(x, tb.q15[1][0][c3]);
        child_q[1] = mulhrs(x, tb.q15[1][1][c3]);
      }
      for (int j = 0; j < 4; ++j) {
        const unsigned c2 = polar_code(layout, region, 2, 2 * node + j / 2, s, tb.bits[1]);
        int32_t fq;
        if (q15) {
          fq = mulhrs(mulhrs(child_q[j / 2], tb.q15[0][j % 2][c2]), 256);
        } else {
          const float f = child[j / 2] * (j % 2 ? tb.sin[1][c2] : tb.cos[1][c2]);
          fq = static_cast<int32_t>(std::nearbyint(f));
        }
        const int pair = 4 * node + j;
        const unsigned c = polar_code(layout, region, 1, pair, s, tb.bits[0]);
        for (int h = 0; h < g; ++h) {
          const int32_t a = tb.a1_i8_pair[(h * pairs + pair) * 16 + (c & 15)];
          sum[h] += fq * (c & 16 ? -a : a);
        }
      }
    }
    for (int h = 0; h < g; ++h) {
      scores[h * s_stride + t] = static_cast<float>(sum[h]) * (rmax / 127.0f) * tb.a1_i8_scale[h];
    }
  }
}

const KernelSet& scalar_kernels() {
  static const KernelSet set{"scalar",  score_f32,   score_f16,   value_f32,
                             value_f16, score_polar, value_polar, softmax};
  return set;
}

}  // namespace polarquant
