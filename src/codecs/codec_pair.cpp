// Pair names for methods whose keys and values use different codecs.
#include <polarquant/codec.h>
#include <polarquant/codec_pair.h>
#include <polarquant/error.h>

namespace polarquant {

CodecPair codec_pair(std::string_view name) {
  const size_t slash = name.find('/');
  if (slash != std::string_view::npos) {
    if (slash == 0 || slash + 1 == name.size() ||
        name.find('/', slash + 1) != std::string_view::npos) {
      throw_invalid("codec choice '" + std::string(name) + "' must be NAME or KEY/VALUE");
    }
    return {codec_pair(name.substr(0, slash)).key, codec_pair(name.substr(slash + 1)).value};
  }
  if (name == "kivi2") return {"kivi2k", "kivi2v"};
  if (name == "kivi4") return {"kivi4k", "kivi4v"};
  // The QJL paper's Llama runs pair 1-bit-JL keys with 2-bit per-token values.
  if (name == "qjl") return {"qjl", "kivi2v"};
  // The runtime's default (docs/RESULTS.md section 6): keys get more bits than values, 4.0 bits per
  // coordinate on average at head_dim 64.
  if (name == kDefaultPolarPair) return {"polar-544444", "polar-422222"};
  return {std::string(name), std::string(name)};
}

std::vector<std::string> codec_pair_names() {
  std::vector<std::string> names;
  for (const std::string& n : codec_names()) {
    const bool kivi_role = n.size() == 6 && n.rfind("kivi", 0) == 0;
    if (kivi_role && n.back() == 'v') continue;
    names.push_back(kivi_role ? n.substr(0, 5) : n);
  }
  return names;
}

}  // namespace polarquant
