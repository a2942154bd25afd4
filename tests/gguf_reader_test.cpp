// GGUF reader: a designed file parses to exactly what was written; every truncation and each kind
// of corrupt field gives a Format (or Unsupported) error, never a crash.
#include "model/gguf.h"
#include "model_test_util.h"

#include <polarquant/error.h>

#include <gtest/gtest.h>

#include <random>

namespace polarquant::model {
namespace {

using polarquant::testing::GgufBuilder;

std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

GgufBuilder sample_builder() {
  GgufBuilder b;
  b.kv_string("general.architecture", "llama");
  b.kv_u32("llama.block_count", 2);
  b.kv_f32("llama.rope.freq_base", 500000.0f);
  b.kv_bool("tokenizer.ggml.add_bos_token", true);
  b.kv_strings("tokenizer.ggml.tokens", {"a", "bc", ""});
  b.kv_i32s("tokenizer.ggml.token_type", {1, -2, 3});
  b.tensor("v", {3}, 0, f32_bytes({1.0f, 2.0f, 3.0f}));
  std::vector<float> m(64);
  for (int i = 0; i < 64; ++i) m[i] = 0.25f * i;
  std::vector<uint8_t> q(row_bytes(GgmlType::kQ8_0, 32) * 2);
  quantize_row_ref(GgmlType::kQ8_0, m.data(), q.data(), 32);
  quantize_row_ref(GgmlType::kQ8_0, m.data() + 32, q.data() + q.size() / 2, 32);
  b.tensor("m", {32, 2}, 8, q);
  return b;
}

TEST(GgufReader, ParsesWhatWasWritten) {
  const auto bytes = sample_builder().build();
  const GgufFile f = GgufFile::parse(bytes.data(), bytes.size());
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_uint("llama.block_count"), 2u);
  EXPECT_FLOAT_EQ(static_cast<float>(f.get_float("llama.rope.freq_base")), 500000.0f);
  EXPECT_TRUE(f.get_bool("tokenizer.ggml.add_bos_token", false));
  EXPECT_FALSE(f.get_bool("absent", false));
  EXPECT_EQ(f.get_string_array("tokenizer.ggml.tokens"), (std::vector<std::string>{"a", "bc", ""}));
  EXPECT_EQ(f.get("tokenizer.ggml.token_type").elements[1].i, -2);
  ASSERT_EQ(f.tensors().size(), 2u);
  const TensorInfo& v = f.tensor("v");
  EXPECT_EQ(v.n_elements(), 3);
  float got[3];
  std::memcpy(got, v.data, 12);
  EXPECT_EQ(got[2], 3.0f);
  const TensorInfo& m = f.tensor("m");
  EXPECT_EQ(m.type, GgmlType::kQ8_0);
  EXPECT_EQ(m.rows(), 2);
  EXPECT_EQ(static_cast<size_t>(m.data - bytes.data()) % f.alignment(), 0u);
  std::vector<float> row(32);
  dequantize_row_ref(m.type, m.data + m.n_bytes / 2, row.data(), 32);
  EXPECT_NEAR(row[31], 0.25f * 63, 0.25f * 63 / 127.0f);
  EXPECT_THROW(f.get_uint("general.architecture"), Error);
  EXPECT_THROW(f.tensor("absent"), Error);
}

TEST(GgufReader, EveryTruncationIsAFormatError) {
  const auto bytes = sample_builder().build();
  for (size_t n = 0; n < bytes.size(); ++n) {
    std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + static_cast<long>(n));
    try {
      GgufFile::parse(cut.data(), cut.size());
      ADD_FAILURE() << "prefix of " << n << " bytes parsed";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kFormat) << n << ": " << e.what();
    }
  }
}

void expect_format_error(std::vector<uint8_t> bytes, size_t at, uint64_t value, size_t width,
                         const std::string& needle) {
  std::memcpy(bytes.data() + at, &value, width);
  try {
    GgufFile::parse(bytes.data(), bytes.size());
    ADD_FAILURE() << "corrupt field at " << at << " parsed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(GgufReader, CorruptHeaderFieldsAreNamed) {
  const auto bytes = sample_builder().build();
  expect_format_error(bytes, 0, 0x46554746u, 4, "magic");
  expect_format_error(bytes, 4, 2, 4, "version 2");
  expect_format_error(bytes, 8, 1ull << 60, 8, "tensor_count");
  expect_format_error(bytes, 16, 1ull << 60, 8, "metadata_kv_count");
  // The first key's length (offset 24) claims more bytes than the file holds.
  expect_format_error(bytes, 24, 1ull << 40, 8, "metadata key");
}

TEST(GgufReader, BadTensorsAreRefused) {
  auto with = [](std::vector<uint64_t> dims, uint32_t type, size_t n_bytes) {
    GgufBuilder b;
    b.tensor("t", std::move(dims), type, std::vector<uint8_t>(n_bytes));
    return b.build();
  };
  const auto unsupported = with({256}, 10, 84);  // Q2_K
  try {
    GgufFile::parse(unsupported.data(), unsupported.size());
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("'t'"), std::string::npos);
  }
  const auto ragged = with({33}, 2, 64);  // Q4_0 row not a multiple of 32
  EXPECT_THROW(GgufFile::parse(ragged.data(), ragged.size()), Error);
  auto past_end = with({64}, 0, 256);    // claims 256 bytes of data ...
  past_end.resize(past_end.size() - 8);  // ... the file ends before
  EXPECT_THROW(GgufFile::parse(past_end.data(), past_end.size()), Error);
  const auto zero_dim = with({0}, 0, 0);
  EXPECT_THROW(GgufFile::parse(zero_dim.data(), zero_dim.size()), Error);
  const auto overflow = with({1ull << 40, 1ull << 40}, 0, 0);
  EXPECT_THROW(GgufFile::parse(overflow.data(), overflow.size()), Error);
}

TEST(GgufReader, RandomByteFlipsNeverCrash) {
  const auto bytes = sample_builder().build();
  std::mt19937 rng(7);
  for (int trial = 0; trial < 2000; ++trial) {
    auto b = bytes;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) b[rng() % b.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
    try {
      GgufFile::parse(b.data(), b.size());
    } catch (const Error&) {
      // A clean error is the expected outcome for most flips; a crash or sanitizer report is not.
    }
  }
}

}  // namespace
}  // namespace polarquant::model
