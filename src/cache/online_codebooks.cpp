// The paper's "online" codebooks (KvCacheOptions::online_codebooks): per sequence, layer and side,
// the angle codebooks refined on the angles of the sequence's first append. Cheap by design: a
// seeded subsample of at most kOnlineSamples angles per level, Lloyd warm-started from the cache's
// codebooks (analytic by default), kOnlineIterations iterations, and a codec that shares the
// cache codec's rotation.
#include <polarquant/polar_transform.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "cache/kv_cache_impl.h"
#include "core/random.h"

namespace polarquant {

namespace {

// Up to `limit` distinct indices of [0, n), seeded (all of them, in order, if n <= limit).
std::vector<size_t> sample_indices(size_t n, size_t limit, Rng& rng) {
  std::vector<size_t> idx(n);
  std::iota(idx.begin(), idx.end(), size_t{0});
  if (n <= limit) return idx;
  for (size_t i = 0; i < limit; ++i) std::swap(idx[i], idx[i + rng.below(n - i)]);
  idx.resize(limit);
  return idx;
}

}  // namespace

std::unique_ptr<PolarCodec> fit_online_codec(const PolarCodec& base, const float* x, size_t n_rows,
                                             uint64_t seed) {
  const PolarShape& shape = base.shape();
  const size_t dim = static_cast<size_t>(shape.dim);
  Rng rng(seed);
  // Enough vectors for kOnlineSamples angles at the last level (the one with the fewest angles).
  const size_t per_vector_last = static_cast<size_t>(shape.angles_at(shape.levels));
  const size_t want_rows = (kOnlineSamples + per_vector_last - 1) / per_vector_last;
  const std::vector<size_t> rows = sample_indices(n_rows, want_rows, rng);
  std::vector<float> picked(rows.size() * dim);
  for (size_t i = 0; i < rows.size(); ++i) {
    std::copy_n(x + rows[i] * dim, dim, picked.begin() + static_cast<std::ptrdiff_t>(i * dim));
  }
  std::vector<float> y(picked.size());
  std::vector<float> angles(rows.size() * shape.num_angles());
  std::vector<float> radii(rows.size() * shape.num_radii());
  base.rotation().forward(picked.data(), y.data(), rows.size());
  polar_forward(shape, y.data(), angles.data(), radii.data(), rows.size());

  std::vector<Codebook> books = base.codebooks();
  std::vector<float> level_angles, samples;
  for (int l = 1; l <= shape.levels; ++l) {
    const size_t per_vector = static_cast<size_t>(shape.angles_at(l));
    level_angles.clear();
    for (size_t v = 0; v < rows.size(); ++v) {
      const float* a = &angles[v * shape.num_angles() + shape.offset_of(l)];
      level_angles.insert(level_angles.end(), a, a + per_vector);
    }
    const Codebook& start = books[l - 1];
    if (level_angles.size() < kOnlineMinSamplesPerCell * static_cast<size_t>(start.size())) {
      continue;  // too few angles to move this level's codebook: keep the cache's
    }
    samples.clear();
    for (size_t i : sample_indices(level_angles.size(), kOnlineSamples, rng)) {
      samples.push_back(level_angles[i]);
    }
    // polar_forward's float atan2 can return exactly 2pi for an angle just below it; that is
    // angle 0 on the circle (the codec's quantizer treats it the same way).
    if (l == 1) {
      const float turn = static_cast<float>(Codebook::range_end(1));
      for (float& a : samples) {
        if (a >= turn) a = 0.0f;
      }
    }
    books[l - 1] = refine_codebook(start, samples.data(), samples.size(), kOnlineIterations);
  }
  return base.with_codebooks(std::move(books));
}

}  // namespace polarquant
