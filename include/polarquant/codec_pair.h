// Key/value codec pairs. Some methods code keys and values differently (KIVI quantizes keys per
// channel over tokens and values per token over channels; QJL codes keys only and pairs them with
// KIVI values), so make_codec names are per role ("kivi2k", "kivi2v") and a pair name ("kivi2")
// names both. Every other codec name is its own pair (the same codec for keys and values).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace polarquant {

struct CodecPair {
  std::string key;    // a make_codec name for keys
  std::string value;  // a make_codec name for values
};

// The PolarQuant pair the model commands use by default: "polar4kv" = keys polar-544444 (L=6;
// 5,4,4,4,4,4 bits; 4.75 bits/coordinate at head_dim 64), values polar-422222 (4,2,2,2,2,2; 3.25
// bits): 4.0 bits per coordinate on average, chosen by measurement (docs/RESULTS.md section 6).
inline constexpr const char* kDefaultPolarPair = "polar4kv";

// "kivi2" -> {kivi2k, kivi2v}, "kivi4" -> {kivi4k, kivi4v}, "qjl" -> {qjl, kivi2v}, "polar4kv" ->
// {polar-544444, polar-422222}; "KEY/VALUE" -> the key codec of KEY's pair and the value codec of
// VALUE's ("polar4kv/f16" -> {polar-544444, f16}); any other name -> {name, name}. Throws
// InvalidArgument for a malformed "KEY/VALUE" (an empty side, two slashes); does not check that the
// names exist (make_codec does).
CodecPair codec_pair(std::string_view name);
// The pair names for every codec family, in display order (per-role KIVI names folded into their
// pair name).
std::vector<std::string> codec_pair_names();

}  // namespace polarquant
