#include <polarquant/codebook.h>
#include <polarquant/error.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <numbers>
#include <string>

#include "core/bytes.h"
#include "core/random.h"

namespace polarquant {

namespace {

constexpr double kPi = std::numbers::pi;
constexpr uint32_t kCodebookVersion = 1;

void check_level_bits(int level, int bits) {
  if (level < 1 || level > 16) {
    throw_invalid("codebook level must be in [1, 16], got " + std::to_string(level));
  }
  if (bits < 1 || bits > 8) {
    throw_invalid("bits per angle must be in [1, 8], got " + std::to_string(bits) + " at level " +
                  std::to_string(level));
  }
}

double circular_distance(double a, double b) {
  double d = std::fabs(a - b);
  d = std::fmod(d, 2.0 * kPi);
  return std::min(d, 2.0 * kPi - d);
}

}  // namespace

double Codebook::range_end(int level) {
  return level == 1 ? 2.0 * kPi : kPi / 2.0;
}

double Codebook::density(int level, double angle) {
  if (level == 1) return (angle >= 0.0 && angle < 2.0 * kPi) ? 1.0 / (2.0 * kPi) : 0.0;
  if (angle < 0.0 || angle > kPi / 2.0) return 0.0;
  const double m = std::ldexp(1.0, level - 1);  // 2^(l-1)
  // log of Gamma(2^(l-1)) / (2^(2^(l-1)-2) Gamma(2^(l-2))^2), then times sin(2 psi)^(m-1).
  const double log_c = std::lgamma(m) - (m - 2.0) * std::log(2.0) - 2.0 * std::lgamma(m / 2.0);
  const double s = std::sin(2.0 * angle);
  if (s <= 0.0) return 0.0;
  return std::exp(log_c + (m - 1.0) * std::log(s));
}

Codebook::Codebook(int level, int bits, std::vector<float> centroids)
    : level_(level), bits_(bits), centroids_(std::move(centroids)) {
  check_level_bits(level, bits);
  const size_t k = size_t{1} << bits;
  const std::string where = "codebook for level " + std::to_string(level);
  if (centroids_.size() != k) {
    throw_invalid(where + ": expected 2^" + std::to_string(bits) + " = " + std::to_string(k) +
                  " centroids, got " + std::to_string(centroids_.size()));
  }
  // Compared in float: the angles themselves are floats, and float(pi/2) is slightly above pi/2.
  const float end = static_cast<float>(range_end(level));
  for (size_t i = 0; i < k; ++i) {
    const float c = centroids_[i];
    const bool in_range = level == 1 ? (c >= 0.0f && c < end) : (c >= 0.0f && c <= end);
    if (!std::isfinite(c) || !in_range) {
      throw_invalid(where + ": centroid " + std::to_string(i) + " = " + std::to_string(c) +
                    " is outside " + (level == 1 ? "[0, 2pi)" : "[0, pi/2]"));
    }
    if (i > 0 && c < centroids_[i - 1]) {
      throw_invalid(where + ": centroids must be sorted ascending (centroid " + std::to_string(i) +
                    " is smaller than centroid " + std::to_string(i - 1) + ")");
    }
  }
  cos_.resize(k);
  sin_.resize(k);
  for (size_t i = 0; i < k; ++i) {
    cos_[i] = static_cast<float>(std::cos(static_cast<double>(centroids_[i])));
    sin_[i] = static_cast<float>(std::sin(static_cast<double>(centroids_[i])));
  }
  boundaries_.resize(k - 1);
  for (size_t i = 0; i + 1 < k; ++i) boundaries_[i] = 0.5f * (centroids_[i] + centroids_[i + 1]);
}

int Codebook::quantize(float angle) const {
  // Number of boundaries strictly below the angle: a tie goes to the lower centroid.
  const int k = size();
  int idx = static_cast<int>(std::lower_bound(boundaries_.begin(), boundaries_.end(), angle) -
                             boundaries_.begin());
  if (level_ == 1 && (idx == 0 || idx == k - 1)) {
    // Near the wrap-around the nearest centroid may be the one on the other side of 0 = 2pi.
    const double d_first = circular_distance(angle, centroids_[0]);
    const double d_last = circular_distance(angle, centroids_[k - 1]);
    idx = d_first <= d_last ? 0 : k - 1;
  }
  return idx;
}

namespace {

Codebook compute_analytic_codebook(int level, int bits) {
  const int k = 1 << bits;
  std::vector<float> centroids(static_cast<size_t>(k));
  if (level == 1) {
    for (int i = 0; i < k; ++i) centroids[i] = static_cast<float>((i + 0.5) * 2.0 * kPi / k);
    return Codebook(level, bits, std::move(centroids));
  }
  // Lloyd-Max on the density, discretised on a fine midpoint grid over [0, pi/2] with prefix sums
  // of mass and first moment, so that each iteration costs O(k log n).
  const int n = 1 << 17;
  const double h = (kPi / 2.0) / n;
  std::vector<double> mass(n + 1, 0.0), moment(n + 1, 0.0);
  for (int i = 0; i < n; ++i) {
    const double x = (i + 0.5) * h;
    const double w = Codebook::density(level, x) * h;
    mass[i + 1] = mass[i] + w;
    moment[i + 1] = moment[i] + w * x;
  }
  const double total = mass[n];
  std::vector<double> c(static_cast<size_t>(k));
  // Start from the equal-mass quantiles.
  for (int i = 0, j = 0; i < k; ++i) {
    const double target = (i + 0.5) / k * total;
    while (j < n && mass[j + 1] < target) ++j;
    c[i] = (j + 0.5) * h;
  }
  auto index_of = [&](double x) {  // first grid cell whose midpoint is >= x
    const double t = x / h - 0.5;
    return std::clamp(static_cast<int>(std::ceil(t)), 0, n);
  };
  for (int iter = 0; iter < 20000; ++iter) {
    double change = 0.0;
    int lo = 0;
    for (int i = 0; i < k; ++i) {
      const int hi = i + 1 < k ? index_of(0.5 * (c[i] + c[i + 1])) : n;
      const double m = mass[hi] - mass[lo];
      if (m > 0.0) {
        const double updated = (moment[hi] - moment[lo]) / m;
        change = std::max(change, std::fabs(updated - c[i]));
        c[i] = updated;
      }
      lo = hi;
    }
    if (change < 1e-12) break;
  }
  for (int i = 0; i < k; ++i) centroids[i] = static_cast<float>(c[i]);
  return Codebook(level, bits, std::move(centroids));
}

}  // namespace

Codebook analytic_codebook(int level, int bits) {
  check_level_bits(level, bits);
  // Computing one costs a few milliseconds; caches and codecs ask for the same few many times.
  static std::mutex mutex;
  static std::map<std::pair<int, int>, Codebook> memo;
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = memo.find({level, bits});
  if (it == memo.end())
    it = memo.emplace(std::make_pair(level, bits), compute_analytic_codebook(level, bits)).first;
  return it->second;
}

double angle_mse(const Codebook& codebook, const float* samples, size_t n) {
  if (n == 0) return 0.0;
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double c = codebook.centroids()[codebook.quantize(samples[i])];
    const double e = codebook.circular() ? circular_distance(samples[i], c) : samples[i] - c;
    sum += e * e;
  }
  return sum / static_cast<double>(n);
}

namespace {

void check_samples(int level, const float* samples, size_t n, const char* what) {
  const float end = static_cast<float>(Codebook::range_end(level));
  const bool circular = level == 1;
  for (size_t i = 0; i < n; ++i) {
    const float s = samples[i];
    if (!std::isfinite(s) || s < 0.0f || (circular ? s >= end : s > end)) {
      throw_invalid(std::string(what) + " sample " + std::to_string(i) + " = " + std::to_string(s) +
                    " is not a level-" + std::to_string(level) + " angle in " +
                    (circular ? "[0, 2pi)" : "[0, pi/2]"));
    }
  }
}

// Centroids as floats inside the level's range, sorted (a centroid just below 2pi or pi/2 can
// round to the float range end; 2pi is angle 0).
std::vector<float> as_floats(int level, const std::vector<double>& values) {
  const float end = static_cast<float>(Codebook::range_end(level));
  std::vector<float> out(values.size());
  for (size_t q = 0; q < values.size(); ++q) {
    float v = static_cast<float>(values[q]);
    if (level == 1 && v >= end) v = 0.0f;
    out[q] = std::min(v, end);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Lloyd iterations on all samples from the centroids c: interval means, or circular means at
// level 1. Each iteration lowers (or keeps) the samples' mean squared error.
Codebook lloyd(int level, int bits, std::vector<double> c, const float* samples, size_t n,
               int max_iterations) {
  const size_t k = c.size();
  const bool circular = level == 1;
  std::vector<double> sum_a(k), sum_b(k);
  std::vector<size_t> count(k);
  std::vector<double> cos_s, sin_s;  // level 1: each sample's point on the circle, computed once
  if (circular && max_iterations > 0) {
    cos_s.resize(n);
    sin_s.resize(n);
    for (size_t i = 0; i < n; ++i) {
      cos_s[i] = std::cos(static_cast<double>(samples[i]));
      sin_s[i] = std::sin(static_cast<double>(samples[i]));
    }
  }
  for (int iter = 0; iter < max_iterations; ++iter) {
    const Codebook current(level, bits, as_floats(level, c));
    c.assign(current.centroids().begin(), current.centroids().end());  // indices match quantize
    std::fill(sum_a.begin(), sum_a.end(), 0.0);
    std::fill(sum_b.begin(), sum_b.end(), 0.0);
    std::fill(count.begin(), count.end(), 0);
    for (size_t i = 0; i < n; ++i) {
      const int q = current.quantize(samples[i]);
      if (circular) {
        sum_a[q] += cos_s[i];
        sum_b[q] += sin_s[i];
      } else {
        sum_a[q] += samples[i];
      }
      ++count[q];
    }
    double change = 0.0;
    for (size_t q = 0; q < k; ++q) {
      if (count[q] == 0) continue;  // an empty cell keeps its centroid
      double updated;
      if (circular) {
        updated = std::atan2(sum_b[q], sum_a[q]);
        if (updated < 0.0) updated += 2.0 * kPi;
        if (updated >= 2.0 * kPi) updated = 0.0;
      } else {
        updated = sum_a[q] / static_cast<double>(count[q]);
      }
      change =
          std::max(change, circular ? circular_distance(updated, c[q]) : std::fabs(updated - c[q]));
      c[q] = updated;
    }
    std::sort(c.begin(), c.end());
    if (change < 1e-9) break;
  }
  return Codebook(level, bits, as_floats(level, c));
}

}  // namespace

Codebook train_codebook(int level, int bits, const float* samples, size_t n, uint64_t seed,
                        int max_iterations) {
  check_level_bits(level, bits);
  const size_t k = size_t{1} << bits;
  if (n < k) {
    throw_invalid("training a " + std::to_string(bits) + "-bit codebook for level " +
                  std::to_string(level) + " needs at least " + std::to_string(k) +
                  " samples, got " + std::to_string(n));
  }
  check_samples(level, samples, n, "training");
  const bool circular = level == 1;
  auto dist2 = [&](double a, double b) {
    const double d = circular ? circular_distance(a, b) : a - b;
    return d * d;
  };
  // k-means++ seeding on at most 65536 samples (a deterministic stride subsample).
  Rng rng(seed);
  const size_t stride = std::max<size_t>(1, n / 65536);
  std::vector<double> pool;
  for (size_t i = 0; i < n; i += stride) pool.push_back(samples[i]);
  std::vector<double> c;
  c.push_back(pool[rng.below(pool.size())]);
  std::vector<double> best(pool.size());
  for (size_t i = 0; i < pool.size(); ++i) best[i] = dist2(pool[i], c[0]);
  while (c.size() < k) {
    double total = 0.0;
    for (double b : best) total += b;
    size_t pick = rng.below(pool.size());
    if (total > 0.0) {
      double r = rng.uniform() * total;
      for (size_t i = 0; i < pool.size(); ++i) {
        r -= best[i];
        if (r < 0.0) {
          pick = i;
          break;
        }
      }
    }
    c.push_back(pool[pick]);
    for (size_t i = 0; i < pool.size(); ++i) best[i] = std::min(best[i], dist2(pool[i], c.back()));
  }
  std::sort(c.begin(), c.end());
  return lloyd(level, bits, std::move(c), samples, n, max_iterations);
}

Codebook refine_codebook(const Codebook& start, const float* samples, size_t n,
                         int max_iterations) {
  if (start.size() == 0) throw_invalid("refine_codebook: the starting codebook is empty");
  if (max_iterations < 0) {
    throw_invalid("refine_codebook: max_iterations = " + std::to_string(max_iterations) +
                  " is negative");
  }
  check_samples(start.level(), samples, n, "refinement");
  std::vector<double> c(start.centroids().begin(), start.centroids().end());
  return lloyd(start.level(), start.bits(), std::move(c), samples, n, max_iterations);
}

std::vector<uint8_t> serialize_codebooks(const std::vector<Codebook>& codebooks) {
  ByteWriter w;
  w.raw("PQCB", 4);
  w.u32(kCodebookVersion);
  w.u32(static_cast<uint32_t>(codebooks.size()));
  for (const auto& cb : codebooks) {
    w.u32(static_cast<uint32_t>(cb.level()));
    w.u32(static_cast<uint32_t>(cb.bits()));
    for (float c : cb.centroids()) w.f32(c);
  }
  w.u32(crc32(w.bytes().data(), w.bytes().size()));
  return std::move(w.bytes());
}

std::vector<Codebook> deserialize_codebooks(const uint8_t* data, size_t size,
                                            const std::string& where) {
  ByteReader r(data, size, where);
  const uint8_t* magic = r.take(4, "magic");
  if (std::memcmp(magic, "PQCB", 4) != 0)
    r.fail("not a polarquant codebook file (magic is not PQCB)");
  const uint32_t version = r.u32("version");
  if (version != kCodebookVersion) {
    r.fail("unsupported codebook format version " + std::to_string(version) +
           " (this build reads " + std::to_string(kCodebookVersion) + ")");
  }
  const uint32_t count = r.u32("count");
  if (count == 0 || count > 16)
    r.fail("codebook count " + std::to_string(count) + " is not in [1, 16]");
  std::vector<Codebook> out;
  for (uint32_t i = 0; i < count; ++i) {
    const uint32_t level = r.u32("level");
    const uint32_t bits = r.u32("bits");
    if (level < 1 || level > 16 || bits < 1 || bits > 8) {
      r.fail("codebook " + std::to_string(i) + " has level " + std::to_string(level) +
             " and bits " + std::to_string(bits) +
             "; expected level in [1, 16] and bits in [1, 8]");
    }
    std::vector<float> centroids(size_t{1} << bits);
    for (auto& c : centroids) c = r.f32("centroid");
    try {
      out.emplace_back(static_cast<int>(level), static_cast<int>(bits), std::move(centroids));
    } catch (const Error& e) {
      r.fail(std::string("invalid codebook ") + std::to_string(i) + ": " + e.what());
    }
  }
  const size_t payload = r.position();
  const uint32_t stored = r.u32("crc32");
  if (stored != crc32(data, payload)) r.fail("checksum mismatch: the codebook data is corrupt");
  if (r.remaining() != 0) r.fail(std::to_string(r.remaining()) + " unexpected trailing bytes");
  return out;
}

void save_codebooks(const std::string& path, const std::vector<Codebook>& codebooks) {
  write_file_bytes(path, serialize_codebooks(codebooks));
}

std::vector<Codebook> load_codebooks(const std::string& path) {
  const std::vector<uint8_t> bytes = read_file_bytes(path);
  return deserialize_codebooks(bytes.data(), bytes.size(), path);
}

}  // namespace polarquant
