// The cache file (src/cache/cache_file.h): a restored sequence equals the saved one byte for byte
// and continues identically; every refusal (another owner or codec, another version, a truncated
// file, a flipped byte, counts or values a cache cannot hold) throws and loads nothing.
#include "cache/cache_file.h"

#include <polarquant/error.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "cache/kv_cache_impl.h"
#include "cache_file_test_util.h"
#include "core/bytes.h"

namespace polarquant {
namespace {

using testing::expect_same_bits;
using testing::fill;
using testing::fix_crc;
using testing::format_error;
using testing::ids;
using testing::options;
using testing::owner_for;
using testing::read_all;
using testing::section_offset;
using testing::token_data;

TEST(CacheFile, Crc32cKnownAnswer) {
  const char* s = "123456789";
  EXPECT_EQ(crc32c(reinterpret_cast<const uint8_t*>(s), 9), 0xe3069283u);
  EXPECT_EQ(crc32(reinterpret_cast<const uint8_t*>(s), 9), 0xcbf43926u);
}

struct Config {
  const char* key;
  const char* value;
  bool quantize_generated;
};

TEST(CacheFile, RestoredSequenceIsIdenticalAndContinuesIdentically) {
  for (const Config& c :
       {Config{"paper", "paper", true}, Config{"polar-544444", "polar-422222", true},
        Config{"q4_0", "q8_0", true}, Config{"kivi2k", "kivi2v", true}, Config{"f16", "f32", true},
        Config{"polar37", "turbo3", false}}) {
    SCOPED_TRACE(std::string(c.key) + "/" + c.value);
    KvCacheOptions o = options(c.key, c.value);
    o.quantize_generated = c.quantize_generated;
    KvCache original(o);
    const SequenceId seq = fill(original, 70, 29, 11);
    const CacheOwner owner = owner_for(o);
    const std::vector<float> logits(100, 0.25f);
    const auto bytes = serialize_cache_sequence(original, seq, owner, ids(99), logits);

    KvCache restored(o);
    restored.add_sequence();  // the restored sequence gets a fresh id beside existing ones
    const CacheFile file = parse_cache_file(bytes.data(), bytes.size(), "mem");
    EXPECT_EQ(file.header.tokens.size(), 99u);
    EXPECT_EQ(file.header.logits, logits);
    check_cache_file_matches(file, restored, owner);
    const SequenceId back = restore_cache_sequence(restored, file);
    EXPECT_EQ(back, 1);
    // Saving the restored sequence gives the same bytes: nothing was lost or added.
    EXPECT_EQ(serialize_cache_sequence(restored, back, owner, ids(99), logits), bytes);
    for (int l = 0; l < o.n_layers; ++l) {
      expect_same_bits(read_all(original, seq, l), read_all(restored, back, l));
    }
    // Both continue with the same tokens to the same state.
    const auto more = token_data(40, o.n_kv_heads, o.head_dim, 99);
    const size_t row = static_cast<size_t>(o.n_kv_heads) * o.head_dim;
    for (int l = 0; l < o.n_layers; ++l) {
      for (size_t t = 0; t < 40; ++t) {
        original.append(seq, l, more.k.data() + t * row, more.v.data() + t * row, 1);
        restored.append(back, l, more.k.data() + t * row, more.v.data() + t * row, 1);
      }
      expect_same_bits(read_all(original, seq, l), read_all(restored, back, l));
    }
  }
}

// The file holds the pages one after another, each its heads' regions in head order, K then V
// (docs/FORMAT.md section 7), whatever slabs hold them in memory; 100+ pages (30 slabs of 1 to 8
// pages, each head-major) round-trip exactly.
TEST(CacheFile, StoresPagesOneAfterAnotherAcrossSlabs) {
  KvCacheOptions o = options("paper", "f16");
  o.n_layers = 1;
  o.n_kv_heads = 3;
  KvCache cache(o);
  const SequenceId seq = fill(cache, 3300, 3, 13);
  const auto bytes = serialize_cache_sequence(cache, seq, owner_for(o), ids(3303), {});
  const KvCache::Impl& m = cache.impl();
  const SequenceLayer& sl = m.layer(seq, 0, "test");
  ASSERT_GE(sl.pages, 100u);
  // The key mean, an empty key_mean_pre and 4 sink rows (K, V) precede the pages.
  const size_t row = 3 * 64;
  size_t at = section_offset(bytes, 2) + 12 + 4 + 6 * 8 + 4 + row * 4 + 4 + 2 * 4 * row * 4;
  for (const bool keys : {true, false}) {
    for (size_t p = 0; p < sl.pages; ++p) {
      for (int h = 0; h < o.n_kv_heads; ++h) {
        ASSERT_EQ(std::memcmp(&bytes[at], m.region(sl, keys, p, h), m.head_bytes(keys)), 0)
            << (keys ? "keys" : "values") << ", page " << p << ", head " << h;
        at += m.head_bytes(keys);
      }
    }
  }
  KvCache restored(o);
  const CacheFile file = parse_cache_file(bytes.data(), bytes.size(), "long");
  const SequenceId back = restore_cache_sequence(restored, file);
  EXPECT_EQ(serialize_cache_sequence(restored, back, owner_for(o), ids(3303), {}), bytes);
  expect_same_bits(read_all(cache, seq, 0), read_all(restored, back, 0));
  EXPECT_EQ(restored.memory().total_bytes, cache.memory().total_bytes);
}

// tests/data/cache_v1_paper_q4_0.pqkv was written by main at 7a07c69 (format version 1), which
// allocated every page separately (same options, owner, ids and fill as here; 2 KV heads, 5 pages
// in slabs of 1, 2 and 4 pages now). Version 1 files still load, as caches without RoPE-aware
// centering; saved again they are version 3 files, the same as saving the cache they came from.
TEST(CacheFile, ReadsAVersion1FileWrittenWithOnePagePerAllocation) {
  const std::string path =
      std::string(POLARQUANT_SOURCE_DIR) + "/tests/data/cache_v1_paper_q4_0.pqkv";
  const auto bytes = read_file_bytes(path);
  KvCacheOptions o = options("paper", "q4_0");
  o.n_layers = 1;
  o.head_dim = 32;
  KvCache cache(o);
  const SequenceId seq = fill(cache, 150, 5, 21);
  ASSERT_EQ(cache.impl().layer(seq, 0, "test").pages, 5u);
  KvCache restored(o);
  const CacheFile file = parse_cache_file(bytes.data(), bytes.size(), path);
  EXPECT_EQ(file.header.version, 1u);
  EXPECT_FALSE(file.header.rope_center);
  check_cache_file_matches(file, restored, owner_for(o));
  const SequenceId back = restore_cache_sequence(restored, file);
  expect_same_bits(read_all(cache, seq, 0), read_all(restored, back, 0));
  const auto now = serialize_cache_sequence(cache, seq, owner_for(o), ids(155), {});
  EXPECT_EQ(serialize_cache_sequence(restored, back, owner_for(o), ids(155), {}), now);
  // Versions 2 and 3 add 6 bytes to HEAD (RoPE centering off: no frequencies), 4 to the layer
  // section.
  EXPECT_EQ(now.size(), bytes.size() + 6 + 4);
}

TEST(CacheFile, SavesToATemporaryFileAndRenames) {
  const KvCacheOptions o = options("paper", "paper");
  KvCache cache(o);
  const SequenceId seq = fill(cache, 40, 3, 5);
  const std::string path = ::testing::TempDir() + "/cache_file_test.pqkv";
  save_cache_file(path, cache, seq, owner_for(o), ids(43), {});
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  const auto bytes = read_file_bytes(path);
  EXPECT_EQ(bytes, serialize_cache_sequence(cache, seq, owner_for(o), ids(43), {}));
  std::filesystem::remove(path);
  // A wrong token count is refused before anything is written.
  EXPECT_THROW(save_cache_file(path, cache, seq, owner_for(o), ids(42), {}), Error);
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(CacheFile, RefusesAnotherOwnerOrCacheConfiguration) {
  const KvCacheOptions o = options("paper", "paper");
  KvCache cache(o);
  const SequenceId seq = fill(cache, 40, 0, 5);
  const auto bytes = serialize_cache_sequence(cache, seq, owner_for(o), ids(40), {});
  const CacheFile file = parse_cache_file(bytes.data(), bytes.size(), "x.pqkv");
  auto refused = [&](const KvCacheOptions& other, const CacheOwner& owner, const char* words) {
    KvCache c(other);
    try {
      check_cache_file_matches(file, c, owner);
      ADD_FAILURE() << "accepted; expected a refusal naming " << words;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("x.pqkv"), std::string::npos) << e.what();
    }
  };
  CacheOwner owner = owner_for(o);
  owner.model_hash ^= 1;
  refused(o, owner, "another model");
  owner = owner_for(o);
  owner.architecture = "other/gguf";
  refused(o, owner, "architecture");
  refused(options("q4_0", "paper"), owner_for(o), "key codec 'paper', but this run has 'q4_0'");
  refused(options("paper", "polar37"), owner_for(o), "value codec");
  KvCacheOptions changed = o;
  changed.seed += 1;
  refused(changed, owner_for(o), "rotation seed");
  changed = o;
  changed.sink_tokens = 0;
  refused(changed, owner_for(o), "--sink");
  changed = o;
  changed.center_keys = false;
  refused(changed, owner_for(o), "centering");
  changed = o;
  changed.page_tokens = 64;
  refused(changed, owner_for(o), "page_tokens");
}

TEST(CacheFile, RefusesWrongVersionTruncationAndEveryFlippedByte) {
  KvCacheOptions o = options("paper", "q4_0");
  o.n_layers = 1;
  o.head_dim = 32;
  KvCache cache(o);
  const SequenceId seq = fill(cache, 45, 2, 3);
  const auto bytes = serialize_cache_sequence(cache, seq, owner_for(o), ids(47), {});
  EXPECT_EQ(format_error(bytes, o), "");

  auto version = bytes;
  version[8] = 4;
  EXPECT_NE(format_error(version, o).find("version 4; this build reads versions 1 to 3"),
            std::string::npos);
  version[8] = 0;
  EXPECT_NE(format_error(version, o).find("version 0; this build reads versions 1 to 3"),
            std::string::npos);
  auto magic = bytes;
  magic[0] = 'X';
  EXPECT_NE(format_error(magic, o).find("not a polarquant cache file"), std::string::npos);

  for (size_t n = 0; n < bytes.size(); n += (n < 200 ? 1 : 97)) {
    const std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + n);
    const std::string e = format_error(cut, o);
    EXPECT_NE(e, "") << "a file cut to " << n << " bytes was accepted";
    if (n >= 12) {
      EXPECT_NE(e.find("truncated"), std::string::npos) << e;
    }
  }
  for (size_t i = 0; i < bytes.size(); i += (i < 300 ? 1 : 13)) {
    auto flipped = bytes;
    flipped[i] ^= 0x10;
    const std::string e = format_error(flipped, o);
    EXPECT_NE(e, "") << "flipping byte " << i << " was not noticed";
    if (i >= 12) {
      EXPECT_TRUE(e.find("corrupt: CRC-32C") != std::string::npos ||
                  e.find("truncated") != std::string::npos ||
                  e.find("section") != std::string::npos)
          << "byte " << i << ": " << e;
    }
  }
  auto longer = bytes;
  longer.push_back(0);
  EXPECT_NE(format_error(longer, o).find("after the last layer section"), std::string::npos);
}

// Files with valid checksums whose content a cache cannot hold: restore refuses them and leaves
// the cache without a new sequence.
TEST(CacheFile, RefusesInconsistentLayersWithValidChecksums) {
  KvCacheOptions o = options("paper", "paper");
  o.n_layers = 1;
  KvCache cache(o);
  const SequenceId seq = fill(cache, 50, 0, 7);
  const auto bytes = serialize_cache_sequence(cache, seq, owner_for(o), ids(50), {});
  const size_t layer = section_offset(bytes, 2);
  const size_t payload = layer + 12;
  auto edited = [&](size_t at, const void* value, size_t n) {
    auto b = bytes;
    std::memcpy(&b[payload + at], value, n);
    fix_crc(b, layer);
    return b;
  };
  const uint64_t wrong_coded = 16;
  EXPECT_NE(format_error(edited(4 + 3 * 8, &wrong_coded, 8), o).find("inconsistent counts"),
            std::string::npos);
  const float nan = std::nanf("");
  // The key mean is the first float after the counts; sink rows follow the mean.
  EXPECT_NE(format_error(edited(4 + 6 * 8 + 4, &nan, 4), o).find("key mean is not finite"),
            std::string::npos);
  const size_t row = static_cast<size_t>(o.n_kv_heads) * o.head_dim;
  const size_t sink_rows = 4 + 6 * 8 + 4 + row * 4 + 4;  // after the mean and key_mean_pre's 0
  EXPECT_NE(format_error(edited(sink_rows + 8, &nan, 4), o).find("sink row value is not finite"),
            std::string::npos);
  // An fp16 radius of +inf in the first key page.
  const size_t pages = sink_rows + 2 * 4 * row * 4;
  const uint16_t inf16 = 0x7c00;
  EXPECT_NE(format_error(edited(pages, &inf16, 2), o).find("decodes to a non-finite value"),
            std::string::npos);

  KvCache target(o);
  auto bad = edited(4 + 6 * 8 + 4, &nan, 4);
  const CacheFile f = parse_cache_file(bad.data(), bad.size(), "bad");
  EXPECT_THROW(restore_cache_sequence(target, f), Error);
  EXPECT_FALSE(target.has_sequence(0));
  EXPECT_EQ(target.add_sequence(), 0);
}

// The fuzz target's seeds (fuzz/corpus/cache_file) are files of the current format; with
// POLARQUANT_WRITE_FUZZ_SEEDS=1 this test rewrites them.
TEST(CacheFile, FuzzSeedsAreCurrent) {
  const std::string dir = std::string(POLARQUANT_SOURCE_DIR) + "/fuzz/corpus/cache_file/";
  const char* write = std::getenv("POLARQUANT_WRITE_FUZZ_SEEDS");
  for (const Config& c : {Config{"paper", "q4_0", true}, Config{"f16", "kivi2v", false}}) {
    KvCacheOptions o = options(c.key, c.value);
    o.head_dim = 32;
    o.n_kv_heads = 1;
    o.quantize_generated = c.quantize_generated;
    KvCache cache(o);
    const SequenceId seq = fill(cache, 40, 3, 1);
    const auto bytes =
        serialize_cache_sequence(cache, seq, owner_for(o), ids(43), std::vector<float>(100, 1.0f));
    const std::string path = dir + c.key + "_" + c.value + ".pqkv";
    if (write != nullptr && std::string(write) == "1") write_file_bytes(path, bytes);
    if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " absent";
    EXPECT_EQ(read_file_bytes(path), bytes) << path << " is stale: rerun with "
                                            << "POLARQUANT_WRITE_FUZZ_SEEDS=1";
  }
}

}  // namespace
}  // namespace polarquant
