// make_codec: the one place that maps short codec names to codec objects.
#include <polarquant/codec.h>
#include <polarquant/error.h>
#include <polarquant/polar_codec.h>

#include <algorithm>

#include "codecs/float_codecs.h"
#include "codecs/peer_codecs.h"

namespace polarquant {

std::vector<std::string> codec_names() {
  std::vector<std::string> names;
  names.push_back("f32");
  names.push_back("f16");
  for (const auto& peer : codecs::peer_codec_names()) names.push_back(peer);
  for (const auto& preset : polar_preset_names()) names.push_back(preset);
  return names;
}

std::unique_ptr<Codec> make_codec(std::string_view name, int dim, uint64_t seed) {
  if (name == "f32") return std::make_unique<F32Codec>(dim);
  if (name == "f16") return std::make_unique<F16Codec>(dim);
  if (auto peer = codecs::make_peer_codec(name, dim, seed)) return peer;
  if (is_polar_codec_name(name)) {
    PolarConfig config = polar_preset(name, dim);
    config.seed = seed;
    return std::make_unique<PolarCodec>(std::move(config));
  }
  std::string known;
  for (const auto& n : codec_names()) known += (known.empty() ? "" : ", ") + n;
  throw_invalid("unknown codec '" + std::string(name) + "'; known codecs: " + known +
                ", or polar-DIGITS (bits per level, e.g. polar-4222)");
}

}  // namespace polarquant
