// K/V dump format: round trip, and every malformed file refused with a Format error.
#include <gtest/gtest.h>

#include <polarquant/error.h>

#include <cstdio>
#include <string>

#include "core/random.h"
#include "eval/kv_dump.h"

namespace polarquant {
namespace {

KvDump sample_dump(uint64_t seed) {
  KvDump d;
  d.n_tokens = 5;
  d.n_kv_heads = 2;
  d.n_q_heads = 6;
  d.head_dim = 8;
  d.description = "test dump";
  Rng rng(seed);
  for (int id : {0, 3, 7}) {
    KvDumpLayer layer;
    layer.layer_id = id;
    for (auto* t : {&layer.k, &layer.v}) {
      for (size_t i = 0; i < d.n_tokens * d.kv_row(); ++i) t->push_back(float(rng.gaussian()));
    }
    for (size_t i = 0; i < d.n_tokens * d.q_row(); ++i) layer.q.push_back(float(rng.gaussian()));
    d.layers.push_back(std::move(layer));
  }
  return d;
}

void expect_format_error(const std::vector<uint8_t>& bytes, const std::string& fragment) {
  try {
    deserialize_kv_dump(bytes.data(), bytes.size(), "x.kv");
    FAIL() << "accepted a malformed dump (expected an error containing '" << fragment << "')";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat) << e.what();
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(KvDump, RoundTripIsExact) {
  const KvDump d = sample_dump(1);
  const auto bytes = serialize_kv_dump(d);
  // Header 36 + description + 3 layer ids + floats + CRC.
  const size_t floats = 3 * d.n_tokens * (2 * d.kv_row() + d.q_row());
  EXPECT_EQ(bytes.size(), 36 + d.description.size() + 12 + 4 * floats + 4);
  const KvDump back = deserialize_kv_dump(bytes.data(), bytes.size());
  EXPECT_EQ(back.n_tokens, d.n_tokens);
  EXPECT_EQ(back.n_kv_heads, d.n_kv_heads);
  EXPECT_EQ(back.n_q_heads, d.n_q_heads);
  EXPECT_EQ(back.head_dim, d.head_dim);
  EXPECT_EQ(back.description, d.description);
  ASSERT_EQ(back.layers.size(), d.layers.size());
  for (size_t l = 0; l < d.layers.size(); ++l) {
    EXPECT_EQ(back.layers[l].layer_id, d.layers[l].layer_id);
    EXPECT_EQ(back.layers[l].k, d.layers[l].k);
    EXPECT_EQ(back.layers[l].v, d.layers[l].v);
    EXPECT_EQ(back.layers[l].q, d.layers[l].q);
  }
}

TEST(KvDump, FileRoundTrip) {
  const KvDump d = sample_dump(2);
  const std::string path = ::testing::TempDir() + "kv_dump_test.kv";
  write_kv_dump(path, d);
  const KvDump back = read_kv_dump(path);
  EXPECT_EQ(back.layers[2].q, d.layers[2].q);
  std::remove(path.c_str());
  EXPECT_THROW(read_kv_dump(path), Error);
}

TEST(KvDump, EveryTruncationIsRefused) {
  const auto bytes = serialize_kv_dump(sample_dump(3));
  for (size_t n = 0; n < bytes.size(); n += (n < 64 ? 1 : 97)) {
    const std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + static_cast<long>(n));
    EXPECT_THROW(deserialize_kv_dump(cut.data(), cut.size(), "cut"), Error) << "length " << n;
  }
}

TEST(KvDump, CorruptFieldsAreNamed) {
  const auto good = serialize_kv_dump(sample_dump(4));
  auto bad = good;
  bad[0] = 'X';
  expect_format_error(bad, "magic");
  bad = good;
  bad[8] = 9;
  expect_format_error(bad, "version");
  bad = good;
  bad[24] = 5;  // n_q_heads 5 with 2 KV heads
  expect_format_error(bad, "n_q_heads");
  bad = good;
  bad[28] = 0;  // head_dim 0
  expect_format_error(bad, "head_dim");
  bad = good;
  bad.push_back(0);
  expect_format_error(bad, "file size");
  bad = good;
  bad[bad.size() - 100] ^= 0x40;  // a payload bit: only the CRC can tell
  expect_format_error(bad, "CRC");
}

TEST(KvDump, WriterRefusesInconsistentDumps) {
  KvDump d = sample_dump(5);
  d.layers[1].v.pop_back();
  EXPECT_THROW(serialize_kv_dump(d), Error);
  d = sample_dump(5);
  d.layers[2].layer_id = 3;  // not increasing
  EXPECT_THROW(serialize_kv_dump(d), Error);
  d = sample_dump(5);
  d.layers[0].q[4] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(serialize_kv_dump(d), Error);
}

}  // namespace
}  // namespace polarquant
