#include "cache/rope_center.h"

#include <polarquant/error.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

namespace polarquant {

RopeCenter::RopeCenter(const std::vector<float>& inv_freq, bool neox, int head_dim, int page_tokens,
                       int sink_tokens)
    : head_dim_(head_dim), page_tokens_(page_tokens), sink_(sink_tokens) {
  if (inv_freq.empty()) return;
  if (head_dim % 2 != 0 || inv_freq.size() != static_cast<size_t>(head_dim / 2)) {
    throw_invalid("KvCacheOptions.key_rope_inv_freq has " + std::to_string(inv_freq.size()) +
                  " frequencies; head_dim " + std::to_string(head_dim) + " needs " +
                  std::to_string(head_dim / 2));
  }
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    const float f = inv_freq[i];
    if (!std::isfinite(f) || f < 0.0f) {
      throw_invalid("KvCacheOptions.key_rope_inv_freq[" + std::to_string(i) +
                    "] = " + std::to_string(f) + "; expected a finite frequency >= 0");
    }
    const int a = neox ? static_cast<int>(i) : static_cast<int>(2 * i);
    const int b = neox ? static_cast<int>(i) + head_dim / 2 : static_cast<int>(2 * i + 1);
    all_freq_.push_back(f);
    all_a_.push_back(a);
    all_b_.push_back(b);
    if (static_cast<double>(f) * page_tokens < kMaxTurn) {
      freq_.push_back(f);
      a_.push_back(a);
      b_.push_back(b);
    }
  }
}

void RopeCenter::cover(size_t pages) {
  const size_t have = freq_.empty() ? 0 : rot_.size() / (2 * freq_.size());
  if (pages <= have) return;
  rot_.resize(pages * freq_.size() * 2);
  for (size_t p = have; p < pages; ++p) {
    const double middle =
        static_cast<double>(sink_) + static_cast<double>(p * page_tokens_) + 0.5 * page_tokens_;
    for (size_t i = 0; i < freq_.size(); ++i) {
      const double angle = middle * freq_[i];
      rot_[(p * freq_.size() + i) * 2] = static_cast<float>(std::cos(angle));
      rot_[(p * freq_.size() + i) * 2 + 1] = static_cast<float>(std::sin(angle));
    }
  }
}

void RopeCenter::pre_rope_mean(const float* k, size_t n, size_t first_position, int heads,
                               float* mean) const {
  const size_t row = static_cast<size_t>(heads) * head_dim_;
  std::vector<double> sum(row, 0.0);
  for (size_t t = 0; t < n; ++t) {
    const double position = static_cast<double>(first_position + t);
    for (size_t i = 0; i < all_freq_.size(); ++i) {
      const double c = std::cos(position * all_freq_[i]), s = std::sin(position * all_freq_[i]);
      for (int h = 0; h < heads; ++h) {
        const float* x = k + t * row + static_cast<size_t>(h) * head_dim_;
        double* out = sum.data() + static_cast<size_t>(h) * head_dim_;
        out[all_a_[i]] += x[all_a_[i]] * c + x[all_b_[i]] * s;  // R(-angle)
        out[all_b_[i]] += -x[all_a_[i]] * s + x[all_b_[i]] * c;
      }
    }
  }
  for (size_t j = 0; j < row; ++j) mean[j] = static_cast<float>(sum[j] / static_cast<double>(n));
}

void RopeCenter::page_delta(size_t page, const float* mean_pre, const float* mean_post, int heads,
                            float* delta) const {
  for (int h = 0; h < heads; ++h) {
    const size_t o = static_cast<size_t>(h) * head_dim_;
    for (int j = 0; j < head_dim_; ++j) delta[o + j] = 0.0f;
    for (size_t i = 0; i < freq_.size(); ++i) {
      const float c = cos(page, i), s = sin(page, i);
      const float ma = mean_pre[o + a_[i]], mb = mean_pre[o + b_[i]];
      delta[o + a_[i]] = ma * c - mb * s - mean_post[o + a_[i]];
      delta[o + b_[i]] = ma * s + mb * c - mean_post[o + b_[i]];
    }
  }
}

void RopeCenter::add_page_deltas(const float* mean_pre, const float* mean_post, int heads,
                                 size_t sink, size_t coded, size_t begin, size_t end,
                                 float* k) const {
  const size_t row = static_cast<size_t>(heads) * head_dim_;
  std::vector<float> delta(row);
  size_t delta_page = SIZE_MAX;
  for (size_t pos = std::max(begin, sink); pos < std::min(end, sink + coded); ++pos) {
    const size_t page = (pos - sink) / static_cast<size_t>(page_tokens_);
    if (page != delta_page) {
      page_delta(page, mean_pre, mean_post, heads, delta.data());
      delta_page = page;
    }
    for (size_t i = 0; i < row; ++i) k[(pos - begin) * row + i] += delta[i];
  }
}

PageScoreShift::PageScoreShift(const RopeCenter& rc, const float* q, const float* mean_pre,
                               const float* mean_post)
    : rc_(&rc), c_(rc.pairs()), s_(rc.pairs()) {
  double constant = 0.0;
  for (size_t i = 0; i < rc.pairs(); ++i) {
    const float qa = q[rc.a(i)], qb = q[rc.b(i)];
    const float ma = mean_pre[rc.a(i)], mb = mean_pre[rc.b(i)];
    c_[i] = qa * ma + qb * mb;
    s_[i] = qb * ma - qa * mb;
    constant -=
        static_cast<double>(qa) * mean_post[rc.a(i)] + static_cast<double>(qb) * mean_post[rc.b(i)];
  }
  constant_ = static_cast<float>(constant);
}

float PageScoreShift::operator()(size_t page) const {
  float sum = constant_;
  for (size_t i = 0; i < c_.size(); ++i)
    sum += rc_->cos(page, i) * c_[i] + rc_->sin(page, i) * s_[i];
  return sum;
}

}  // namespace polarquant
