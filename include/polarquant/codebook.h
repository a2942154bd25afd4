// Scalar codebooks for the angles of one polar level.
//
// Level 1 angles live on the circle [0, 2pi) (distances wrap); levels >= 2 live on [0, pi/2].
// Three ways to get a codebook: analytic (Lloyd-Max on the paper's Lemma-2 density: exact, needs no
// data), trained from sample angles (k-means++ then Lloyd, circular at level 1), and loaded from a
// file written by save_codebooks (format in docs/FORMAT.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace polarquant {

class Codebook {
 public:
  Codebook() = default;
  // Centroids must be finite, inside the level's range, and there must be 2^bits of them, sorted
  // ascending; throws InvalidArgument otherwise. level >= 1, 1 <= bits <= 8.
  Codebook(int level, int bits, std::vector<float> centroids);

  int level() const { return level_; }
  int bits() const { return bits_; }
  int size() const { return static_cast<int>(centroids_.size()); }
  bool circular() const { return level_ == 1; }
  const std::vector<float>& centroids() const { return centroids_; }
  const std::vector<float>& cosines() const { return cos_; }
  const std::vector<float>& sines() const { return sin_; }

  // Index of the nearest centroid (circular distance at level 1). Ties go to the lower index.
  int quantize(float angle) const;
  // Upper decision boundaries between consecutive centroids (size()-1 values, ascending).
  const std::vector<float>& boundaries() const { return boundaries_; }

  // The density of level-l angles of a standard Gaussian vector (paper Lemma 2): uniform 1/(2pi) on
  // [0, 2pi) for level 1; Gamma(2^(l-1)) / (2^(2^(l-1)-2) Gamma(2^(l-2))^2) sin(2psi)^(2^(l-1)-1)
  // on [0, pi/2] for l >= 2.
  static double density(int level, double angle);
  // Upper end of the level's range: 2pi for level 1, pi/2 otherwise.
  static double range_end(int level);

 private:
  int level_ = 0;
  int bits_ = 0;
  std::vector<float> centroids_, cos_, sin_, boundaries_;
};

// Lloyd-Max codebook for the level's analytic density. Deterministic; level 1 gives the uniform
// grid (k + 1/2) 2pi / 2^bits.
Codebook analytic_codebook(int level, int bits);

// k-means++ seeding (seeded, deterministic) followed by Lloyd iterations on the samples; circular
// at level 1. Non-finite or out-of-range samples are refused with InvalidArgument. Needs at least
// 2^bits samples.
Codebook train_codebook(int level, int bits, const float* samples, size_t n, uint64_t seed = 0,
                        int max_iterations = 100);

// Lloyd iterations on the samples starting from `start` (e.g. the analytic codebook: the cheap
// warm start of the cache's online codebooks, KvCacheOptions::online_codebooks). Deterministic;
// does not raise the samples' angle_mse above start's (up to float rounding of the centroids); an
// empty cell keeps its centroid. Refuses
// samples outside the level's range with InvalidArgument. n = 0 or max_iterations = 0 returns
// start's centroids.
Codebook refine_codebook(const Codebook& start, const float* samples, size_t n,
                         int max_iterations = 10);

// Mean squared (circular at level 1) quantization error of the codebook on the samples.
double angle_mse(const Codebook& codebook, const float* samples, size_t n);

// Save / load one codebook per level (levels 1..L in order). load throws Io for an unreadable
// file and Format, naming the file and the field, for a malformed one.
void save_codebooks(const std::string& path, const std::vector<Codebook>& codebooks);
std::vector<Codebook> load_codebooks(const std::string& path);
// The same format in memory.
std::vector<uint8_t> serialize_codebooks(const std::vector<Codebook>& codebooks);
std::vector<Codebook> deserialize_codebooks(const uint8_t* data, size_t size,
                                            const std::string& where = "buffer");

}  // namespace polarquant
