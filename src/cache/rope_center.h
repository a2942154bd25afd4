// RoPE-aware key centering (KvCacheOptions::key_rope_inv_freq). The cache stores keys after RoPE,
// which turns a constant pre-RoPE bias into one that rotates with the position, so one mean of a
// sequence's first tokens fits later tokens less and less (docs/RESULTS.md section 6: the
// centered keys' energy grows 2.6-3.8x by 8k on SmolLM2). With the model's RoPE frequencies the
// cache also keeps the first append's mean *before* RoPE and, for the pairs that turn little within
// a page, stores each page's keys minus that mean rotated to the page's middle position (minus the
// post-RoPE mean already subtracted from every key). The shift differs per page, so attention adds
// q . delta(page) back to the page's scores (page_score_shift) and read() adds delta back to the
// keys: both exact.
#pragma once

#include <cstddef>
#include <vector>

namespace polarquant {

class RopeCenter {
 public:
  RopeCenter() = default;
  // inv_freq: head_dim / 2 RoPE frequencies, pair i = coordinates (2i, 2i + 1) (interleaved, as
  // Llama GGUFs) or (i, i + head_dim / 2) (neox). Pairs turning less than kMaxTurn radians within a
  // page are shifted per page; the others keep the post-RoPE mean alone. Empty: disabled.
  RopeCenter(const std::vector<float>& inv_freq, bool neox, int head_dim, int page_tokens,
             int sink_tokens);
  static constexpr double kMaxTurn = 2.0;

  bool enabled() const { return !freq_.empty(); }
  size_t pairs() const { return freq_.size(); }
  int a(size_t i) const { return a_[i]; }
  int b(size_t i) const { return b_[i]; }

  // Makes the page table cover pages [0, pages). Not thread-safe: called where pages are added.
  void cover(size_t pages);
  // cos and sin of page `page`'s middle angle for pair i (cover() must include the page).
  float cos(size_t page, size_t i) const { return rot_[(page * freq_.size() + i) * 2]; }
  float sin(size_t page, size_t i) const { return rot_[(page * freq_.size() + i) * 2 + 1]; }

  // Per-channel mean over n rows (row_floats = heads x head_dim floats each) of the rows rotated
  // back from their positions first_position, first_position + 1, ... (all pairs).
  void pre_rope_mean(const float* k, size_t n, size_t first_position, int heads, float* mean) const;
  // delta of `page` for every head (row_floats floats; zero on the coordinates not shifted):
  // R(middle) mean_pre - mean_post on the shifted pairs.
  void page_delta(size_t page, const float* mean_pre, const float* mean_post, int heads,
                  float* delta) const;
  // Adds each coded row's page delta to rows [begin, end) of k (row-major, heads x head_dim per
  // row; rows begin.. of a sequence whose coded positions are [sink, sink + coded)).
  void add_page_deltas(const float* mean_pre, const float* mean_post, int heads, size_t sink,
                       size_t coded, size_t begin, size_t end, float* k) const;

 private:
  int head_dim_ = 0, page_tokens_ = 0, sink_ = 0;
  std::vector<float> all_freq_;  // every pair's frequency (pre_rope_mean)
  std::vector<int> all_a_, all_b_;
  std::vector<float> freq_;  // the shifted pairs
  std::vector<int> a_, b_;
  std::vector<float> rot_;  // [page][pair] (cos, sin)
};

// The per-page score corrections of one query head against one KV head: q . delta(page) for a
// query q (head_dim floats, in the scale the scores use), from the head's mean_pre and mean_post
// (head_dim floats each).
class PageScoreShift {
 public:
  PageScoreShift(const RopeCenter& rc, const float* q, const float* mean_pre,
                 const float* mean_post);
  float operator()(size_t page) const;

 private:
  const RopeCenter* rc_;
  std::vector<float> c_, s_;  // q . R(angle) mean_pre = sum_i cos_i c_i + sin_i s_i
  float constant_ = 0.0f;     // - q . mean_post on the shifted pairs
};

}  // namespace polarquant
