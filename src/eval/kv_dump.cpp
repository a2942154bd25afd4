// Reader and writer of K/V dump files (format in kv_dump.h and docs/FORMAT.md).
#include "eval/kv_dump.h"

#include <polarquant/error.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "core/bytes.h"

namespace polarquant {
namespace {

// The float payload is copied straight between the file and memory.
static_assert(std::endian::native == std::endian::little,
              "kv dump I/O assumes a little-endian host");

constexpr char kMagic[8] = {'P', 'Q', 'K', 'V', 'D', 'U', 'M', 'P'};
constexpr uint32_t kMaxLayers = 4096, kMaxTokens = 1u << 24, kMaxHeads = 4096, kMaxDim = 65536;
constexpr uint32_t kMaxDescription = 65536;

void check_range(const char* field, uint64_t value, uint64_t lo, uint64_t hi,
                 const std::string& where) {
  if (value < lo || value > hi) {
    throw_invalid(where + ": " + field + " is " + std::to_string(value) + "; expected " +
                  std::to_string(lo) + ".." + std::to_string(hi));
  }
}

// Index of the first non-finite float, or count when all are finite.
size_t first_non_finite(const float* x, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    if (!std::isfinite(x[i])) return i;
  }
  return count;
}

}  // namespace

void KvDump::validate() const {
  const std::string where = "kv dump";
  check_range("n_layers_dumped", layers.size(), 1, kMaxLayers, where);
  check_range("n_tokens", static_cast<uint64_t>(std::max(n_tokens, 0)), 1, kMaxTokens, where);
  check_range("n_kv_heads", static_cast<uint64_t>(std::max(n_kv_heads, 0)), 1, kMaxHeads, where);
  check_range("n_q_heads", static_cast<uint64_t>(std::max(n_q_heads, 0)), 1, kMaxHeads, where);
  check_range("head_dim", static_cast<uint64_t>(std::max(head_dim, 0)), 1, kMaxDim, where);
  check_range("description bytes", description.size(), 0, kMaxDescription, where);
  if (n_q_heads % n_kv_heads != 0) {
    throw_invalid(where + ": n_q_heads " + std::to_string(n_q_heads) +
                  " is not a multiple of n_kv_heads " + std::to_string(n_kv_heads));
  }
  const size_t tokens = static_cast<size_t>(n_tokens);
  for (size_t l = 0; l < layers.size(); ++l) {
    const KvDumpLayer& layer = layers[l];
    if (layer.layer_id < 0 || (l > 0 && layer.layer_id <= layers[l - 1].layer_id)) {
      throw_invalid(where + ": layer_ids must be non-negative and strictly increasing; entry " +
                    std::to_string(l) + " is " + std::to_string(layer.layer_id));
    }
    const struct {
      const char* name;
      const std::vector<float>& data;
      size_t expected;
    } tensors[] = {{"K", layer.k, tokens * kv_row()},
                   {"V", layer.v, tokens * kv_row()},
                   {"Q", layer.q, tokens * q_row()}};
    for (const auto& t : tensors) {
      const std::string name = "layer " + std::to_string(layer.layer_id) + " " + t.name;
      if (t.data.size() != t.expected) {
        throw_invalid(where + ": " + name + " holds " + std::to_string(t.data.size()) +
                      " floats; expected " + std::to_string(t.expected));
      }
      const size_t bad = first_non_finite(t.data.data(), t.data.size());
      if (bad != t.data.size()) {
        throw_invalid(where + ": " + name + " float " + std::to_string(bad) + " is not finite");
      }
    }
  }
}

std::vector<uint8_t> serialize_kv_dump(const KvDump& dump) {
  dump.validate();
  ByteWriter w;
  w.raw(kMagic, sizeof kMagic);
  w.u32(kKvDumpVersion);
  w.u32(static_cast<uint32_t>(dump.layers.size()));
  w.u32(static_cast<uint32_t>(dump.n_tokens));
  w.u32(static_cast<uint32_t>(dump.n_kv_heads));
  w.u32(static_cast<uint32_t>(dump.n_q_heads));
  w.u32(static_cast<uint32_t>(dump.head_dim));
  w.u32(static_cast<uint32_t>(dump.description.size()));
  w.raw(dump.description.data(), dump.description.size());
  for (const auto& layer : dump.layers) w.u32(static_cast<uint32_t>(layer.layer_id));
  for (const auto& layer : dump.layers) {
    for (const auto* t : {&layer.k, &layer.v, &layer.q}) {
      for (float f : *t) w.f32(f);
    }
  }
  std::vector<uint8_t>& bytes = w.bytes();
  const uint32_t crc = crc32(bytes.data(), bytes.size());
  for (int i = 0; i < 4; ++i) bytes.push_back(static_cast<uint8_t>(crc >> (8 * i)));
  return std::move(bytes);
}

KvDump deserialize_kv_dump(const uint8_t* data, size_t size, const std::string& where) {
  ByteReader r(data, size, where);
  const uint8_t* magic = r.take(sizeof kMagic, "magic");
  if (std::memcmp(magic, kMagic, sizeof kMagic) != 0) {
    throw_format(where + ": not a K/V dump (magic is not \"PQKVDUMP\")");
  }
  const uint32_t version = r.u32("version");
  if (version != kKvDumpVersion) {
    r.fail("unsupported version " + std::to_string(version) + "; this reader knows version " +
           std::to_string(kKvDumpVersion));
  }
  auto field = [&](const char* name, uint32_t lo, uint32_t hi) {
    const uint32_t v = r.u32(name);
    if (v < lo || v > hi) {
      r.fail(std::string("field '") + name + "' is " + std::to_string(v) + "; expected " +
             std::to_string(lo) + ".." + std::to_string(hi));
    }
    return v;
  };
  const uint32_t n_layers = field("n_layers_dumped", 1, kMaxLayers);
  KvDump dump;
  dump.n_tokens = static_cast<int>(field("n_tokens", 1, kMaxTokens));
  dump.n_kv_heads = static_cast<int>(field("n_kv_heads", 1, kMaxHeads));
  dump.n_q_heads = static_cast<int>(field("n_q_heads", 1, kMaxHeads));
  if (dump.n_q_heads % dump.n_kv_heads != 0) {
    r.fail("n_q_heads " + std::to_string(dump.n_q_heads) + " is not a multiple of n_kv_heads " +
           std::to_string(dump.n_kv_heads));
  }
  dump.head_dim = static_cast<int>(field("head_dim", 1, kMaxDim));
  const uint32_t description_bytes = field("description_bytes", 0, kMaxDescription);
  const uint8_t* text = r.take(description_bytes, "description");
  dump.description.assign(reinterpret_cast<const char*>(text), description_bytes);

  // The counts are bounded above, so this product fits in 64 bits; compare it with what is left
  // before allocating anything.
  const uint64_t floats_per_layer =
      static_cast<uint64_t>(dump.n_tokens) * (2 * dump.kv_row() + dump.q_row());
  const uint64_t expected = 4ull * n_layers + 4ull * floats_per_layer * n_layers + 4;
  if (r.remaining() != expected) {
    r.fail("file size does not match the header: " + std::to_string(r.remaining()) +
           " bytes follow the description, the counts need " + std::to_string(expected));
  }
  const uint32_t stored_crc =
      static_cast<uint32_t>(data[size - 4]) | static_cast<uint32_t>(data[size - 3]) << 8 |
      static_cast<uint32_t>(data[size - 2]) << 16 | static_cast<uint32_t>(data[size - 1]) << 24;
  if (crc32(data, size - 4) != stored_crc) {
    throw_format(where + ": CRC-32 mismatch (the file is corrupt or was modified)");
  }
  dump.layers.resize(n_layers);
  for (uint32_t l = 0; l < n_layers; ++l) {
    const uint32_t id = r.u32("layer_ids");
    if (id > 1u << 30 || (l > 0 && static_cast<int>(id) <= dump.layers[l - 1].layer_id)) {
      r.fail("layer_ids must be strictly increasing; entry " + std::to_string(l) + " is " +
             std::to_string(id));
    }
    dump.layers[l].layer_id = static_cast<int>(id);
  }
  const size_t kv_floats = static_cast<size_t>(dump.n_tokens) * dump.kv_row();
  const size_t q_floats = static_cast<size_t>(dump.n_tokens) * dump.q_row();
  for (auto& layer : dump.layers) {
    const std::string prefix = "layer " + std::to_string(layer.layer_id);
    const struct {
      std::vector<float>* out;
      size_t count;
      const char* name;
    } tensors[] = {
        {&layer.k, kv_floats, "K"}, {&layer.v, kv_floats, "V"}, {&layer.q, q_floats, "Q"}};
    for (const auto& t : tensors) {
      const size_t offset = r.position();
      const uint8_t* p = r.take(4 * t.count, t.name);
      t.out->resize(t.count);
      std::memcpy(t.out->data(), p, 4 * t.count);  // the format and every supported host are LE
      const size_t bad = first_non_finite(t.out->data(), t.count);
      if (bad != t.count) {
        throw_format(where + ": " + prefix + " " + t.name + " float " + std::to_string(bad) +
                     " is not finite (at byte offset " + std::to_string(offset + 4 * bad) + ")");
      }
    }
  }
  return dump;
}

void write_kv_dump(const std::string& path, const KvDump& dump) {
  write_file_bytes(path, serialize_kv_dump(dump));
}

KvDump read_kv_dump(const std::string& path) {
  const std::vector<uint8_t> bytes = read_file_bytes(path);
  return deserialize_kv_dump(bytes.data(), bytes.size(), path);
}

}  // namespace polarquant
