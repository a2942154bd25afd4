// The Python module polarquant._core (nanobind): codecs by name with encode/decode on NumPy arrays
// and torch CPU tensors, codec statistics, the generated data of `polarquant codec-stats`, and
// codebook training. Uses only the public headers in include/polarquant/.
//
// Arrays come in through DLPack / the buffer protocol without any implicit conversion: a wrong
// dtype, shape, device or memory layout raises TypeError/ValueError naming what was expected.
// polarquant::Error raised by the library becomes polarquant.Error (a ValueError) with the same
// message.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>
#include <polarquant/codebook.h>
#include <polarquant/codec.h>
#include <polarquant/codec_pair.h>
#include <polarquant/compare.h>
#include <polarquant/error.h>
#include <polarquant/polar_codec.h>
#include <polarquant/stats.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace nb = nanobind;
using namespace nb::literals;

namespace polarquant::python {
namespace {

// A view of a validated, C-contiguous CPU array of rows x cols elements.
template <class T>
struct Rows {
  const T* data = nullptr;
  size_t rows = 0, cols = 0;
};

std::string py_type_name(nb::handle h) {
  return Py_TYPE(h.ptr())->tp_name;
}

std::string dtype_text(nb::handle h) {
  if (nb::hasattr(h, "dtype")) {
    nb::object text = nb::steal(PyObject_Str(h.attr("dtype").ptr()));
    if (text.is_valid()) return nb::cast<std::string>(text);
    PyErr_Clear();
  }
  return "unknown dtype";
}

// Checks that obj is a C-contiguous 2-D CPU array of T (1-D accepted when allow_1d, as one row).
// what: how the error names the argument; cols: required row length (0: any).
template <class T>
Rows<T> as_rows(nb::handle obj, const char* what, const char* expected_dtype, size_t cols,
                bool allow_1d = false) {
  nb::ndarray<> a;
  if (!nb::try_cast(obj, a, /*convert=*/false)) {
    throw nb::type_error((std::string(what) +
                          ": expected a NumPy array or a torch CPU tensor, got " +
                          py_type_name(obj))
                             .c_str());
  }
  if (a.device_type() != nb::device::cpu::value) {
    throw nb::value_error(
        (std::string(what) + ": the array is not in CPU memory (move it with .cpu() first)")
            .c_str());
  }
  if (a.dtype() != nb::dtype<T>()) {
    throw nb::type_error((std::string(what) + ": expected dtype " + expected_dtype + ", got " +
                          dtype_text(obj) + " (convert it first, e.g. .astype(np." +
                          expected_dtype + ") or .to(torch." + expected_dtype + "))")
                             .c_str());
  }
  const size_t nd = a.ndim();
  if (!(nd == 2 || (allow_1d && nd == 1))) {
    throw nb::value_error((std::string(what) + ": expected a 2-D array (n, " +
                           (cols ? std::to_string(cols) : std::string("columns")) + "), got " +
                           std::to_string(nd) + " dimensions")
                              .c_str());
  }
  Rows<T> r;
  r.rows = nd == 2 ? a.shape(0) : 1;
  r.cols = a.shape(nd - 1);
  if (cols != 0 && r.cols != cols) {
    throw nb::value_error((std::string(what) + ": expected rows of " + std::to_string(cols) +
                           " values, got shape (" + std::to_string(r.rows) + ", " +
                           std::to_string(r.cols) + ")")
                              .c_str());
  }
  const bool contiguous =
      r.rows * r.cols == 0 || ((r.cols == 1 || a.stride(nd - 1) == 1) &&
                               (nd == 1 || r.rows == 1 || a.stride(0) == (int64_t)r.cols));
  if (!contiguous) {
    throw nb::value_error((std::string(what) +
                           ": the array is not C-contiguous (use np.ascontiguousarray(x) or "
                           "x.contiguous())")
                              .c_str());
  }
  r.data = static_cast<const T*>(a.data());
  return r;
}

// A new NumPy array of rows x cols that owns v.
template <class T>
nb::ndarray<nb::numpy, T> to_numpy(std::vector<T>&& v, size_t rows, size_t cols) {
  auto* owned = new std::vector<T>(std::move(v));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T>(owned->data(), {rows, cols}, owner);
}

std::vector<uint8_t> bytes_of(const nb::bytes& b) {
  const auto* p = static_cast<const uint8_t*>(b.data());
  return std::vector<uint8_t>(p, p + b.size());
}

bool is_polar_preset(const std::string& name) {
  const auto presets = polar_preset_names();
  return std::find(presets.begin(), presets.end(), name) != presets.end();
}

class PyCodec {
 public:
  PyCodec(const std::string& name, int dim, uint64_t seed, std::optional<std::string> rotation,
          std::optional<std::string> radius, std::optional<nb::bytes> codebooks)
      : seed_(seed) {
    if (!rotation && !radius && !codebooks) {
      codec_ = make_codec(name, dim, seed);
      return;
    }
    if (!is_polar_preset(name)) {
      throw_invalid("rotation, radius and codebooks apply to the PolarQuant presets only (" +
                    join(polar_preset_names()) + "), not to '" + name + "'");
    }
    PolarConfig config = polar_preset(name, dim);
    config.seed = seed;
    if (rotation) config.rotation = parse_rotation_kind(*rotation);
    if (radius) config.radius = parse_radius_precision(*radius);
    if (codebooks) {
      const auto data = bytes_of(*codebooks);
      config.codebooks = deserialize_codebooks(data.data(), data.size(), "codebooks");
    }
    config.validate();
    codec_ = std::make_unique<PolarCodec>(std::move(config));
  }

  const Codec& codec() const { return *codec_; }
  uint64_t seed() const { return seed_; }

  nb::ndarray<nb::numpy, uint8_t> encode(nb::handle x) const {
    const auto r = as_rows<float>(x, "encode(x)", "float32", codec_->dim());
    const size_t groups = whole_groups(r.rows, "encode(x)");
    std::vector<uint8_t> codes(groups * codec_->group_bytes());
    {
      nb::gil_scoped_release release;
      codec_->encode(r.data, groups, codes.data());
    }
    return to_numpy(std::move(codes), groups, codec_->group_bytes());
  }

  nb::ndarray<nb::numpy, float> decode(nb::handle codes) const {
    const auto r = as_rows<uint8_t>(codes, "decode(codes)", "uint8", 0, /*allow_1d=*/true);
    const size_t total = r.rows * r.cols, gb = codec_->group_bytes();
    if (r.cols != gb && !(r.rows == 1 && total % gb == 0)) {
      throw_invalid("decode(codes): expected rows of group_bytes = " + std::to_string(gb) +
                    " bytes (or a 1-D array of whole groups), got " + std::to_string(r.rows) +
                    " x " + std::to_string(r.cols));
    }
    const size_t groups = total / gb, n = groups * codec_->group_size();
    std::vector<float> x(n * codec_->dim());
    {
      nb::gil_scoped_release release;
      codec_->decode(r.data, groups, x.data());
    }
    return to_numpy(std::move(x), n, codec_->dim());
  }

  nb::dict stats(nb::handle x, const std::string& data, size_t count, uint64_t query_seed) const {
    std::vector<float> values;
    if (!x.is_none()) {
      const auto r = as_rows<float>(x, "stats(x)", "float32", codec_->dim());
      values.assign(r.data, r.data + r.rows * r.cols);
    } else if (data == "gaussian" || data == "keylike") {
      if (count < 1 || count > 10'000'000) throw_invalid("stats: count must be in [1, 10000000]");
      // The command line's data: codec-stats uses seed 1 (Gaussian) and 2 (key-like).
      values = data == "gaussian" ? gaussian_data(count, codec_->dim(), 1)
                                  : keylike_data(count, codec_->dim(), 2);
    } else {
      throw_invalid("stats: data must be 'gaussian' or 'keylike', got '" + data + "'");
    }
    whole_groups(values.size() / codec_->dim(), "stats(x)");
    CodecStats s;
    {
      nb::gil_scoped_release release;
      s = measure_codec(*codec_, values, query_seed);
    }
    nb::dict d;
    d["bits_per_coordinate"] = s.bits_per_coordinate;
    d["compression_vs_fp16"] = s.compression_vs_fp16;
    d["nmse"] = s.nmse;
    d["inner_product_error"] = s.inner_product_error;
    d["vectors"] = values.size() / codec_->dim();
    return d;
  }

 private:
  static std::string join(const std::vector<std::string>& names) {
    std::string out;
    for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
    return out;
  }

  size_t whole_groups(size_t rows, const char* what) const {
    const size_t g = static_cast<size_t>(codec_->group_size());
    if (rows % g != 0) {
      throw_invalid(std::string(what) + ": codec '" + codec_->name() + "' codes groups of " +
                    std::to_string(g) + " vectors; got " + std::to_string(rows) + " rows");
    }
    return rows / g;
  }

  std::unique_ptr<Codec> codec_;
  uint64_t seed_;
};

// Trains one codebook per polar level on the angles of the rotated rows of x (all rows), as
// `polarquant train-codebooks` does on its training half; returns the codebook file's bytes.
nb::bytes train_codebooks(nb::handle x, const std::string& preset, const std::string& rotation,
                          uint64_t seed, int max_iterations) {
  const auto r = as_rows<float>(x, "train_codebooks(x)", "float32", 0);
  if (r.cols > 65536) throw_invalid("train_codebooks(x): rows longer than 65536 values");
  if (max_iterations < 1) throw_invalid("train_codebooks: max_iterations must be >= 1");
  PolarConfig config = polar_preset(preset, static_cast<int>(r.cols));
  config.rotation = parse_rotation_kind(rotation);
  config.seed = seed;
  std::vector<uint8_t> out;
  {
    nb::gil_scoped_release release;
    const PolarCodec codec(config);
    const PolarShape& shape = codec.shape();
    const size_t n = r.rows;
    std::vector<float> y(n * r.cols), angles(n * shape.num_angles()), radii(n * shape.num_radii());
    codec.rotation().forward(r.data, y.data(), n);
    polar_forward(shape, y.data(), angles.data(), radii.data(), n);
    std::vector<Codebook> books;
    for (int l = 1; l <= shape.levels; ++l) {
      std::vector<float> level;
      level.reserve(n * shape.angles_at(l));
      for (size_t v = 0; v < n; ++v) {
        const float* a = &angles[v * shape.num_angles() + shape.offset_of(l)];
        level.insert(level.end(), a, a + shape.angles_at(l));
      }
      books.push_back(
          train_codebook(l, config.bits[l - 1], level.data(), level.size(), seed, max_iterations));
    }
    out = serialize_codebooks(books);
  }
  return nb::bytes(reinterpret_cast<const char*>(out.data()), out.size());
}

CompareSettings compare_settings(const std::optional<std::vector<std::string>>& codecs,
                                 uint64_t seed, size_t recent_tokens, double min_seconds) {
  if (!(min_seconds >= 0.0 && min_seconds <= 60.0)) {
    throw_invalid("compare: min_seconds must be in [0, 60]");
  }
  CompareSettings s;
  if (codecs) s.codecs = *codecs;
  s.codec_seed = seed;
  s.recent_tokens = recent_tokens;
  s.min_seconds = min_seconds;
  return s;
}

nb::list comparison_rows(const std::vector<CodecComparison>& rows) {
  nb::list out;
  for (const auto& r : rows) {
    nb::dict d;
    d["codec"] = r.codec;
    d["key_codec"] = r.key_codec;
    d["value_codec"] = r.value_codec;
    d["bits_per_coordinate"] = r.bits_per_coordinate;
    d["key_bits_per_coordinate"] = r.key_bits;
    d["value_bits_per_coordinate"] = r.value_bits;
    d["compression_vs_fp16"] = r.compression_vs_fp16;
    d["nmse"] = r.nmse;
    d["nmse_k"] = r.nmse_k;
    d["nmse_v"] = r.nmse_v;
    d["inner_product_error"] = r.inner_product_error;
    d["attention_error"] = r.attention_error;
    d["softmax_kl"] = r.softmax_kl;
    d["encode_vectors_per_s"] = r.encode_vectors_per_s;
    d["attention_tokens_per_s"] = r.attention_tokens_per_s;
    d["cache_attention_tokens_per_s"] = r.cache_attention_tokens_per_s;
    out.append(d);
  }
  return out;
}

nb::list compare(nb::handle k, nb::handle v, nb::handle q,
                 const std::optional<std::vector<std::string>>& codecs, uint64_t seed,
                 size_t recent_tokens, double min_seconds) {
  const auto kr = as_rows<float>(k, "compare(k)", "float32", 0);
  const auto vr = as_rows<float>(v, "compare(v)", "float32", kr.cols);
  const auto qr = as_rows<float>(q, "compare(q)", "float32", kr.cols);
  if (vr.rows != kr.rows) {
    throw_invalid("compare: k has " + std::to_string(kr.rows) + " rows but v has " +
                  std::to_string(vr.rows));
  }
  const auto settings = compare_settings(codecs, seed, recent_tokens, min_seconds);
  std::vector<CodecComparison> rows;
  {
    nb::gil_scoped_release release;
    rows = compare_codecs(kr.data, vr.data, kr.rows, qr.data, qr.rows, static_cast<int>(kr.cols),
                          settings);
  }
  return comparison_rows(rows);
}

nb::list compare_generated(const std::string& data, int dim, size_t count, size_t queries,
                           uint64_t data_seed,
                           const std::optional<std::vector<std::string>>& codecs, uint64_t seed,
                           size_t recent_tokens, double min_seconds) {
  const auto settings = compare_settings(codecs, seed, recent_tokens, min_seconds);
  std::vector<CodecComparison> rows;
  {
    nb::gil_scoped_release release;
    rows = compare_codecs_generated(data, dim, count, queries, data_seed, settings);
  }
  return comparison_rows(rows);
}

nb::ndarray<nb::numpy, float> generated(bool keylike, size_t n, int dim, uint64_t seed) {
  if (n > 10'000'000) throw_invalid("n must be at most 10000000");
  if (dim < 1 || dim > 65536) throw_invalid("dim must be in [1, 65536]");
  auto v = keylike ? keylike_data(n, dim, seed) : gaussian_data(n, dim, seed);
  return to_numpy(std::move(v), n, static_cast<size_t>(dim));
}

}  // namespace
}  // namespace polarquant::python

NB_MODULE(_core, m) {
  using namespace polarquant;
  using polarquant::python::PyCodec;
  m.doc() = "PolarQuant KV-cache codecs (C++ core)";
  nb::exception<Error>(m, "Error", PyExc_ValueError);
  m.attr("DEFAULT_SEED") = kDefaultSeed;

  nb::class_<PyCodec>(m, "Codec", "A KV-cache codec from the C++ registry, by name.")
      .def(nb::init<const std::string&, int, uint64_t, std::optional<std::string>,
                    std::optional<std::string>, std::optional<nb::bytes>>(),
           "name"_a, "dim"_a, "seed"_a = kDefaultSeed, "rotation"_a = nb::none(),
           "radius"_a = nb::none(), "codebooks"_a = nb::none(),
           "Codec by name (see codec_names()). rotation ('none', 'dense', 'hadamard'), radius "
           "('fp16', 'bf16', 'fp32') and codebooks (bytes from train_codebooks) apply to the "
           "PolarQuant presets only.")
      .def_prop_ro("name", [](const PyCodec& c) { return c.codec().name(); })
      .def_prop_ro("dim", [](const PyCodec& c) { return c.codec().dim(); })
      .def_prop_ro("seed", &PyCodec::seed)
      .def_prop_ro("group_size", [](const PyCodec& c) { return c.codec().group_size(); })
      .def_prop_ro("group_bytes", [](const PyCodec& c) { return c.codec().group_bytes(); })
      .def_prop_ro("bits_per_coordinate",
                   [](const PyCodec& c) { return c.codec().bits_per_coordinate(); })
      .def("encode", &PyCodec::encode, "x"_a,
           "float32 (n, dim), C-contiguous, n a multiple of group_size -> uint8 (n / group_size, "
           "group_bytes)")
      .def("decode", &PyCodec::decode, "codes"_a,
           "uint8 (groups, group_bytes) or 1-D whole groups -> float32 (n, dim)")
      .def("stats", &PyCodec::stats, "x"_a = nb::none(), "data"_a = "gaussian", "count"_a = 4000,
           "query_seed"_a = 1,
           "Bits per coordinate, NMSE and inner-product error on x, or on the command line's "
           "generated 'gaussian' / 'keylike' data of count vectors.")
      .def("__repr__", [](const PyCodec& c) {
        return "polarquant.Codec('" + c.codec().name() +
               "', dim=" + std::to_string(c.codec().dim()) + ", seed=" + std::to_string(c.seed()) +
               ")";
      });

  m.def("codec_names", &codec_names, "Every name Codec accepts.");
  m.def("polar_preset_names", &polar_preset_names, "The PolarQuant presets.");
  m.def(
      "codec_pair",
      [](const std::string& name) {
        const CodecPair p = codec_pair(name);
        return std::make_pair(p.key, p.value);
      },
      "name"_a, "(key codec, value codec) names of a pair name such as 'kivi2'.");
  m.def(
      "gaussian_data",
      [](size_t n, int dim, uint64_t seed) {
        return polarquant::python::generated(false, n, dim, seed);
      },
      "n"_a, "dim"_a, "seed"_a, "n x dim standard Gaussian float32, as the C++ code generates it.");
  m.def(
      "keylike_data",
      [](size_t n, int dim, uint64_t seed) {
        return polarquant::python::generated(true, n, dim, seed);
      },
      "n"_a, "dim"_a, "seed"_a, "n x dim key-like float32 (outlier channels, channel mean).");
  m.def("compare", &polarquant::python::compare, "k"_a, "v"_a, "q"_a, "codecs"_a = nb::none(),
        "seed"_a = kDefaultSeed, "recent_tokens"_a = 0, "min_seconds"_a = 0.2,
        "Every codec (pair names; None: all but f32) on one head: k, v float32 (tokens, dim), q "
        "float32 (queries, dim), each query attending to every key. One dict per codec, the "
        "fields of `polarquant compare --json`.");
  m.def("compare_generated", &polarquant::python::compare_generated, "data"_a = "keylike",
        "dim"_a = 128, "count"_a = 4096, "queries"_a = 64, "data_seed"_a = 1,
        "codecs"_a = nb::none(), "seed"_a = kDefaultSeed, "recent_tokens"_a = 0,
        "min_seconds"_a = 0.2,
        "`polarquant compare --data gaussian|keylike` (data_seed is its --seed): one dict per "
        "codec.");
  m.def("train_codebooks", &polarquant::python::train_codebooks, "x"_a, "preset"_a = "paper",
        "rotation"_a = "dense", "seed"_a = kDefaultSeed, "max_iterations"_a = 100,
        "Per-level angle codebooks (k-means++ / Lloyd) trained on x (float32 (n, dim)); returns "
        "the codebook file's bytes, for Codec(preset, dim, codebooks=...).");
}
