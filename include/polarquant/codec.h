// The interface every KV-cache codec implements (PolarQuant, the fp16/bf16 references, and the peer
// methods), in the spirit of faiss's Quantizer: encode a batch of vectors to bytes, decode back,
// and say exactly how many bits each coordinate costs.
//
// A codec encodes "groups" of group_size() consecutive vectors (tokens) at a time. Most codecs code
// each vector on its own (group_size() == 1); a codec that shares statistics across tokens (KIVI's
// per-channel keys) sets a larger group, and the cache keeps a partial group in full precision
// until it fills.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace polarquant {

class Codec {
 public:
  virtual ~Codec() = default;

  // Short stable name used on every command line ("paper", "f16", "q4_0", ...).
  virtual std::string name() const = 0;
  virtual int dim() const = 0;
  // Vectors coded together. encode/decode take whole groups.
  virtual int group_size() const { return 1; }
  // Bytes stored per group, everything included (scales, norms, radii, padding).
  virtual size_t group_bytes() const = 0;
  // Exact storage cost: 8 * group_bytes() / (dim() * group_size()).
  double bits_per_coordinate() const {
    return 8.0 * static_cast<double>(group_bytes()) / (static_cast<double>(dim()) * group_size());
  }

  // x: n_groups * group_size() vectors of dim() floats, row after row; codes: n_groups *
  // group_bytes() bytes. Throws InvalidArgument for non-finite input (naming the vector and
  // coordinate); the output is untouched then.
  virtual void encode(const float* x, size_t n_groups, uint8_t* codes) const = 0;
  // Inverse of encode (up to the quantization error). Throws Format for codes that cannot come from
  // encode (e.g. a non-finite or negative stored norm), naming the group.
  virtual void decode(const uint8_t* codes, size_t n_groups, float* x) const = 0;
};

// Seed used when a command does not give one.
inline constexpr uint64_t kDefaultSeed = 0x5eed'9017'a2c0'0001ull;

// Creates a codec by its short name for vectors of dimension dim. Throws InvalidArgument listing
// the known names when the name is unknown, or explaining why dim does not suit the codec.
std::unique_ptr<Codec> make_codec(std::string_view name, int dim, uint64_t seed = kDefaultSeed);
// Every name make_codec accepts, in display order.
std::vector<std::string> codec_names();

}  // namespace polarquant
