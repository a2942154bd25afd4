// K/V dump files: keys, values and queries of chosen layers of one model run, in fp32, written by
// `polarquant dump-kv` and read by `polarquant compare --data FILE.kv`.
//
// Format version 1, all integers little-endian, floats IEEE binary32 little-endian:
//   offset size  field
//   0      8     magic "PQKVDUMP"
//   8      4     u32 version (1)
//   12     4     u32 n_layers_dumped      1..4096
//   16     4     u32 n_tokens             1..2^24
//   20     4     u32 n_kv_heads           1..4096
//   24     4     u32 n_q_heads            a positive multiple of n_kv_heads, <= 4096
//   28     4     u32 head_dim             1..65536
//   32     4     u32 description_bytes    0..65536
//   36     ...   description: UTF-8 text, no terminator (model, prompt source, RoPE note, ...)
//   then   4*n   u32 layer_ids[n_layers_dumped], strictly increasing
//   then per dumped layer, in layer_ids order:
//          K  f32[n_tokens][n_kv_heads][head_dim]  keys as attention sees them (after RoPE)
//          V  f32[n_tokens][n_kv_heads][head_dim]
//          Q  f32[n_tokens][n_q_heads][head_dim]   queries as attention sees them (after RoPE)
//   last   4     u32 CRC-32 (zlib's) of every preceding byte
// Readers check the magic, version, every count against its range, that the file is exactly as long
// as the counts say, the CRC, and that every float is finite; each failure throws Format naming the
// file, the field and the byte offset.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace polarquant {

inline constexpr uint32_t kKvDumpVersion = 1;

struct KvDumpLayer {
  int layer_id = 0;
  std::vector<float> k;  // n_tokens x n_kv_heads x head_dim
  std::vector<float> v;  // n_tokens x n_kv_heads x head_dim
  std::vector<float> q;  // n_tokens x n_q_heads x head_dim
};

struct KvDump {
  int n_tokens = 0;
  int n_kv_heads = 0;
  int n_q_heads = 0;
  int head_dim = 0;
  std::string description;
  std::vector<KvDumpLayer> layers;

  // Throws InvalidArgument naming the field when a count is out of range, a tensor has the wrong
  // size, layer ids are not strictly increasing, or a value is not finite.
  void validate() const;
  // Floats per token of K (or V) and of Q.
  size_t kv_row() const { return static_cast<size_t>(n_kv_heads) * static_cast<size_t>(head_dim); }
  size_t q_row() const { return static_cast<size_t>(n_q_heads) * static_cast<size_t>(head_dim); }
};

std::vector<uint8_t> serialize_kv_dump(const KvDump& dump);
KvDump deserialize_kv_dump(const uint8_t* data, size_t size, const std::string& where = "buffer");
void write_kv_dump(const std::string& path, const KvDump& dump);
KvDump read_kv_dump(const std::string& path);

}  // namespace polarquant
