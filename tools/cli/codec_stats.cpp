// `polarquant codec-stats`: bits per coordinate, compression and reconstruction error of a
// PolarQuant configuration on generated Gaussian and key-like data, with and without
// preconditioning.
#include <polarquant/error.h>
#include <polarquant/polar_codec.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "command.h"
#include "eval/distortion_stats.h"
#include "eval/synthetic.h"

namespace polarquant::cli {
namespace {

struct Options {
  std::string preset = "paper";
  int dim = 128;
  int levels = 0;    // 0: the preset's
  std::string bits;  // comma-separated, empty: the preset's
  std::string rotation = "dense";
  std::string radius = "fp16";
  std::string codebooks;  // file written by save_codebooks; empty: analytic
  uint64_t seed = kDefaultSeed;
  size_t count = 4000;
  bool json = false;
  std::string codes_out;  // raw codes of the Gaussian case; empty: none
};

std::vector<int> parse_bits(const std::string& text) {
  std::vector<int> bits;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');) {
    try {
      size_t used = 0;
      bits.push_back(std::stoi(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw_invalid("--bits: '" + item + "' is not an integer (expected e.g. --bits 4,2,2,2)");
    }
  }
  return bits;
}

PolarConfig build_config(const Options& o) {
  PolarConfig c = polar_preset(o.preset, o.dim);
  if (!o.bits.empty()) {
    c.bits = parse_bits(o.bits);
    c.levels = o.levels > 0 ? o.levels : static_cast<int>(c.bits.size());
    c.name = "custom";
  } else if (o.levels > 0) {
    throw_invalid("--levels needs --bits with one width per level");
  }
  c.rotation = parse_rotation_kind(o.rotation);
  c.radius = parse_radius_precision(o.radius);
  c.seed = o.seed;
  if (!o.codebooks.empty()) c.codebooks = load_codebooks(o.codebooks);
  c.validate();
  return c;
}

// The codes of x, n * group_bytes() bytes as Codec::encode writes them: a fixture for checking
// other front ends (the Python module) byte for byte against this one.
void write_codes(const Codec& codec, const std::vector<float>& x, const std::string& path) {
  const size_t n = x.size() / static_cast<size_t>(codec.dim());
  std::vector<uint8_t> codes(n * codec.group_bytes());
  codec.encode(x.data(), n, codes.data());
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(codes.data()), static_cast<std::streamsize>(codes.size()));
  if (!f) throw_io("--codes-out: cannot write " + path);
}

void run(const Options& o) {
  if (o.count < 1 || o.count > 10'000'000) throw_invalid("--count must be in [1, 10000000]");
  const PolarConfig config = build_config(o);
  PolarConfig unrotated = config;
  unrotated.rotation = RotationKind::kNone;
  const PolarCodec codec(config), plain(unrotated);
  struct Case {
    const char* name;
    const PolarCodec* codec;
    const std::vector<float>* data;
  };
  const auto gauss = gaussian_data(o.count, o.dim, 1);
  const auto keys = keylike_data(o.count, o.dim, 2);
  const Case cases[] = {{"gaussian", &codec, &gauss},
                        {"gaussian_unrotated", &plain, &gauss},
                        {"keylike", &codec, &keys},
                        {"keylike_unrotated", &plain, &keys}};
  nlohmann::json out;
  std::string bits_text;
  for (int b : config.bits) bits_text += (bits_text.empty() ? "" : ",") + std::to_string(b);
  out["preset"] = config.name;
  out["dim"] = config.dim;
  out["levels"] = config.levels;
  out["bits"] = config.bits;
  out["rotation"] = std::string(rotation_kind_name(config.rotation));
  out["radius"] = std::string(radius_precision_name(config.radius));
  out["bits_per_coordinate"] = codec.bits_per_coordinate();
  out["payload_bits_per_coordinate"] = static_cast<double>(config.payload_bits()) / config.dim;
  out["compression_vs_fp16"] = 16.0 / codec.bits_per_coordinate();
  out["vectors"] = o.count;
  for (const auto& c : cases) {
    const CodecStats s = measure_codec(*c.codec, *c.data);
    out["cases"][c.name] = {{"nmse", s.nmse}, {"inner_product_error", s.inner_product_error}};
  }
  if (!o.codes_out.empty()) write_codes(codec, gauss, o.codes_out);
  if (o.json) {
    std::cout << out.dump(2) << "\n";
    return;
  }
  std::printf("PolarQuant %s: dim %d, %d levels, bits %s, %s radius, %s rotation\n",
              config.name.c_str(), config.dim, config.levels, bits_text.c_str(),
              out["radius"].get<std::string>().c_str(), out["rotation"].get<std::string>().c_str());
  std::printf(
      "bits per coordinate: %.4f stored (%.4f before byte padding); %.3fx smaller than fp16\n",
      codec.bits_per_coordinate(), out["payload_bits_per_coordinate"].get<double>(),
      16.0 / codec.bits_per_coordinate());
  std::printf("%-20s %12s %22s\n", "data", "NMSE", "inner-product error");
  for (const auto& c : cases) {
    std::printf("%-20s %12.4e %22.4e\n", c.name, out["cases"][c.name]["nmse"].get<double>(),
                out["cases"][c.name]["inner_product_error"].get<double>());
  }
  std::printf("(%zu vectors per case; *_unrotated: the same codec without preconditioning)\n",
              o.count);
}

const CommandRegistration registration("codec-stats", [](CLI::App& app) {
  auto options = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("codec-stats",
                                 "Bits and reconstruction error of a PolarQuant configuration on "
                                 "Gaussian and key-like data");
  cmd->add_option("--preset", options->preset, "paper, polar37, polar39 or polar41")
      ->capture_default_str();
  cmd->add_option("--dim", options->dim, "vector dimension (head_dim)")->capture_default_str();
  cmd->add_option("--levels", options->levels, "polar levels L (with --bits)");
  cmd->add_option("--bits", options->bits, "bits per level, level 1 first, e.g. 4,3,3,3,3");
  cmd->add_option("--rotation", options->rotation, "none, dense or hadamard")
      ->capture_default_str();
  cmd->add_option("--radius", options->radius, "fp16, bf16 or fp32")->capture_default_str();
  cmd->add_option("--codebooks", options->codebooks, "codebook file (default: analytic)");
  cmd->add_option("--seed", options->seed, "rotation seed");
  cmd->add_option("--count", options->count, "vectors per case")->capture_default_str();
  cmd->add_flag("--json", options->json, "machine-readable output");
  cmd->add_option("--codes-out", options->codes_out,
                  "write the raw codes of the Gaussian case (count x bytes per vector) to a file");
  cmd->callback([options] { run(*options); });
});

}  // namespace
}  // namespace polarquant::cli
