// `polarquant train-codebooks`: offline codebooks (the paper's "offline" variant) trained with
// k-means++ / Lloyd on the angles of real or generated vectors, saved to a file that codec-stats
// and the codec accept. Prints the held-out angle MSE of the trained and the analytic codebooks.
#include <polarquant/error.h>
#include <polarquant/polar_codec.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "command.h"
#include "eval/kv_dump.h"
#include "eval/synthetic.h"

namespace polarquant::cli {
namespace {

struct Options {
  std::string data = "gaussian";
  std::string preset = "paper";
  std::string output;
  std::string rotation = "dense";
  int dim = 128;
  size_t count = 20000;
  uint64_t seed = kDefaultSeed;
};

void run(const Options& o) {
  std::vector<float> x;
  int dim = o.dim;
  if (o.data == "gaussian" || o.data == "keylike") {
    if (o.count < 2 || o.count > 10'000'000) throw_invalid("--count must be in [2, 10000000]");
    x = o.data == "gaussian" ? gaussian_data(o.count, dim, 3) : keylike_data(o.count, dim, 3);
  } else {
    const KvDump dump = read_kv_dump(o.data);
    dim = dump.head_dim;
    for (const auto& layer : dump.layers) {  // keys and values: one shared codebook, as the paper
      x.insert(x.end(), layer.k.begin(), layer.k.end());
      x.insert(x.end(), layer.v.begin(), layer.v.end());
    }
  }
  PolarConfig config = polar_preset(o.preset, dim);
  config.rotation = parse_rotation_kind(o.rotation);
  config.seed = o.seed;
  const PolarCodec codec(config);
  const size_t n = x.size() / dim;
  if (n < 2)
    throw_invalid("need at least 2 vectors to train and evaluate, got " + std::to_string(n));
  // Angles of the rotated vectors; even vectors train, odd vectors evaluate.
  const PolarShape& shape = codec.shape();
  std::vector<float> y(x.size()), angles(n * shape.num_angles()), radii(n * shape.num_radii());
  codec.rotation().forward(x.data(), y.data(), n);
  polar_forward(shape, y.data(), angles.data(), radii.data(), n);
  std::vector<Codebook> books;
  std::printf("%zu vectors of dimension %d (%s), preset %s, rotation %s\n", n, dim, o.data.c_str(),
              config.name.c_str(), o.rotation.c_str());
  std::printf("%-6s %5s %18s %18s\n", "level", "bits", "trained MSE", "analytic MSE");
  for (int l = 1; l <= shape.levels; ++l) {
    std::vector<float> train, test;
    for (size_t v = 0; v < n; ++v) {
      const float* a = &angles[v * shape.num_angles() + shape.offset_of(l)];
      (v % 2 == 0 ? train : test)
          .insert((v % 2 == 0 ? train : test).end(), a, a + shape.angles_at(l));
    }
    const int bits = config.bits[l - 1];
    books.push_back(train_codebook(l, bits, train.data(), train.size(), o.seed));
    std::printf("%-6d %5d %18.4e %18.4e\n", l, bits,
                angle_mse(books.back(), test.data(), test.size()),
                angle_mse(analytic_codebook(l, bits), test.data(), test.size()));
  }
  if (!o.output.empty()) {
    save_codebooks(o.output, books);
    std::printf("saved %zu codebooks to %s (use: codec-stats --codebooks %s)\n", books.size(),
                o.output.c_str(), o.output.c_str());
  }
}

const CommandRegistration registration("train-codebooks", [](CLI::App& app) {
  auto options = std::make_shared<Options>();
  auto* cmd = app.add_subcommand(
      "train-codebooks", "Train per-level angle codebooks (k-means++ / Lloyd) and save them");
  cmd->add_option("--data", options->data, "gaussian, keylike, or a K/V dump file (.kv)")
      ->capture_default_str();
  cmd->add_option("--preset", options->preset, "PolarQuant preset giving levels and bits")
      ->capture_default_str();
  cmd->add_option("--dim", options->dim, "dimension for generated data")->capture_default_str();
  cmd->add_option("--count", options->count, "vectors of generated data")->capture_default_str();
  cmd->add_option("--rotation", options->rotation, "none, dense or hadamard")
      ->capture_default_str();
  cmd->add_option("--seed", options->seed, "rotation and k-means++ seed");
  cmd->add_option("-o,--output", options->output, "codebook file to write");
  cmd->callback([options] { run(*options); });
});

}  // namespace
}  // namespace polarquant::cli
