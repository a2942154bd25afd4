// Cache files of caches with RoPE-aware key centering (format version 2, one set per layer since
// version 3; KvCacheOptions::key_rope_inv_freq): a restored sequence reads back the same keys,
// attends exactly as the original and continues identically; malformed RoPE fields and another
// RoPE setting are refused naming the field; version 1 files load only into caches without it.
#include <polarquant/attention.h>
#include <polarquant/error.h>

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "cache/cache_file.h"
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
using testing::owner_for;
using testing::read_all;
using testing::section_offset;

using testing::rope_inv_freq;

// cache_file_test's options (2 layers, 2 KV heads, head_dim 64, sink 4, recent 8) with RoPE-aware
// centering: one set for every layer, or one per layer (per_layer: layer 0 base 10000, layer 1
// base 1e6, as Gemma 3's local and global layers).
KvCacheOptions rope_options(const std::string& key, const std::string& value, bool neox = false,
                            bool per_layer = false) {
  KvCacheOptions o = testing::options(key, value);
  o.key_rope_inv_freq = rope_inv_freq(o.head_dim);
  if (per_layer) {
    const auto global = rope_inv_freq(o.head_dim, 1e6);
    o.key_rope_inv_freq.insert(o.key_rope_inv_freq.end(), global.begin(), global.end());
  }
  o.key_rope_neox = neox;
  return o;
}

// The last 3 tokens' attention at `layer` (4 query heads over the 2 KV heads), fused or the
// decode-then-attend reference.
std::vector<float> attend(const KvCache& cache, SequenceId seq, int layer, bool fused) {
  const size_t dim = static_cast<size_t>(cache.options().head_dim);
  const auto q = testing::gaussian(3 * 4 * dim, 9 + layer, 0.3f);
  std::vector<float> out(q.size());
  AttentionOptions a;
  a.use_fused = fused;
  a.n_threads = 1;
  cache_attention(cache, seq, layer, q.data(), 3, 4, out.data(), a);
  return out;
}

// check_cache_file_matches refuses `file` (named `name`) for a cache of `other`: an
// invalid-argument error naming `words` and the file.
void expect_refused(const CacheFile& file, const std::string& name, const KvCacheOptions& other,
                    const std::string& words) {
  KvCache c(other);
  try {
    check_cache_file_matches(file, c, owner_for(other));
    ADD_FAILURE() << "accepted; expected a refusal naming " << words;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
  }
}

void expect_same_state(const KvCache& a, SequenceId sa, const KvCache& b, SequenceId sb) {
  for (int l = 0; l < a.options().n_layers; ++l) {
    SCOPED_TRACE("layer " + std::to_string(l));
    expect_same_bits(read_all(a, sa, l), read_all(b, sb, l));
    for (const bool fused : {true, false})
      expect_same_bits(attend(a, sa, l, fused), attend(b, sb, l, fused));
  }
}

TEST(CacheFileRope, RestoredSequenceReadsAttendsAndContinuesExactly) {
  struct Config {
    const char* key;
    const char* value;
    bool neox, per_layer = false;
  };
  for (const Config& c :
       {Config{"paper", "paper", false}, Config{"polar-544444", "polar-422222", true},
        Config{"q4_0", "q8_0", false}, Config{"f32", "f16", false},
        Config{"polar-544444", "polar-422222", true, true}, Config{"q4_0", "f16", false, true}}) {
    SCOPED_TRACE(std::string(c.key) + "/" + c.value + (c.neox ? ", neox" : "") +
                 (c.per_layer ? ", one set per layer" : ""));
    const KvCacheOptions o = rope_options(c.key, c.value, c.neox, c.per_layer);
    KvCache original(o);
    const SequenceId seq = fill(original, 300, 20, 11);  // 10 pages a layer
    const CacheOwner owner = owner_for(o);
    const auto bytes = serialize_cache_sequence(original, seq, owner, ids(320), {});
    const CacheFile file = parse_cache_file(bytes.data(), bytes.size(), "rope.pqkv");
    EXPECT_EQ(file.header.version, 3u);
    EXPECT_TRUE(file.header.rope_center);
    EXPECT_EQ(file.header.rope_neox, c.neox);
    EXPECT_EQ(file.header.rope_inv_freq, o.key_rope_inv_freq);

    // A fresh cache: its RoPE page table covers no page until the restore extends it.
    KvCache restored(o);
    check_cache_file_matches(file, restored, owner);
    const SequenceId back = restore_cache_sequence(restored, file);
    for (int l = 0; l < o.n_layers; ++l) {
      const SequenceLayer& was = original.impl().layer(seq, l, "test");
      const SequenceLayer& now = restored.impl().layer(back, l, "test");
      ASSERT_EQ(was.key_mean_pre.size(), 128u);
      EXPECT_EQ(now.key_mean_pre, was.key_mean_pre);
      EXPECT_EQ(now.pages, 10u);
      EXPECT_EQ(restored.impl().layer_rope, original.impl().layer_rope);
    }
    EXPECT_EQ(restored.impl().ropes.size(), c.per_layer ? 2u : 1u);
    EXPECT_EQ(serialize_cache_sequence(restored, back, owner, ids(320), {}), bytes);
    expect_same_state(original, seq, restored, back);

    // Both continue with the same tokens (into new pages) to the same state.
    const auto more = testing::token_data(70, o.n_kv_heads, o.head_dim, 99);
    const size_t row = static_cast<size_t>(o.n_kv_heads) * o.head_dim;
    for (int l = 0; l < o.n_layers; ++l) {
      for (size_t t = 0; t < 70; ++t) {
        original.append(seq, l, more.k.data() + t * row, more.v.data() + t * row, 1);
        restored.append(back, l, more.k.data() + t * row, more.v.data() + t * row, 1);
      }
    }
    expect_same_state(original, seq, restored, back);
  }
}

// The RoPE fields of HEAD are its last bytes: u8 on, u8 neox, u32 n, n f32 frequencies.
size_t head_rope_field(const std::vector<uint8_t>& bytes, size_t n_freq) {
  uint64_t length = 0;
  std::memcpy(&length, &bytes[section_offset(bytes, 0) + 4], 8);
  return section_offset(bytes, 0) + 12 + length - n_freq * 4 - 6;
}

TEST(CacheFileRope, RefusesMalformedRopeFieldsNamingThem) {
  KvCacheOptions o = rope_options("paper", "q4_0");
  o.n_layers = 1;
  KvCache cache(o);
  const SequenceId seq = fill(cache, 60, 2, 3);
  const auto bytes = serialize_cache_sequence(cache, seq, owner_for(o), ids(62), {});
  ASSERT_EQ(format_error(bytes, o), "");
  auto has = [&](const std::vector<uint8_t>& b, const std::string& words) {
    const std::string e = format_error(b, o);
    EXPECT_NE(e.find(words), std::string::npos) << "expected '" << words << "', got: " << e;
  };
  // Header: the flags, the frequencies' count and values (valid checksums).
  const size_t rope = head_rope_field(bytes, 32);
  auto head_edit = [&](size_t at, const void* value, size_t n) {
    auto b = bytes;
    std::memcpy(&b[rope + at], value, n);
    fix_crc(b, section_offset(b, 0));
    return b;
  };
  const uint8_t two = 2, zero = 0;
  has(head_edit(0, &two, 1), "rope_center / rope_neox must be 0 or 1");
  has(head_edit(1, &two, 1), "rope_center / rope_neox must be 0 or 1");
  has(head_edit(0, &zero, 1), "RoPE centering 0 (neox 0) with 32 frequencies");
  const uint32_t n31 = 31;
  has(head_edit(2, &n31, 4), "with 31 frequencies, head_dim 64");
  const float nan = std::nanf(""), minus = -1.0f;
  has(head_edit(6 + 3 * 4, &nan, 4), "RoPE frequency 3 is nan");
  has(head_edit(6 + 5 * 4, &minus, 4), "RoPE frequency 5 is -1");

  // Layer: key_mean_pre's count, values and length (the count follows the key mean).
  const size_t row = 2 * 64;
  const size_t layer = section_offset(bytes, 2), pre = layer + 12 + 4 + 6 * 8 + 4 + row * 4;
  auto layer_edit = [&](size_t at, const void* value, size_t n) {
    auto b = bytes;
    std::memcpy(&b[at], value, n);
    fix_crc(b, layer);
    return b;
  };
  for (const uint32_t count : {0u, 127u, 129u, 0xffffffffu}) {
    has(layer_edit(pre, &count, 4), "key_mean_pre floats " + std::to_string(count) +
                                        ", but this cache's RoPE-aware centering needs 128");
  }
  has(layer_edit(pre + 4 + 7 * 4, &nan, 4),
      "layer 0: a pre-RoPE key mean (key_mean_pre) is not finite");
  const float inf = INFINITY;
  has(layer_edit(pre + 4 + 127 * 4, &inf, 4), "key_mean_pre) is not finite");
  // The layer section cut inside key_mean_pre, with its length and checksum rewritten.
  auto cut = std::vector<uint8_t>(bytes.begin(), bytes.begin() + static_cast<long>(pre + 4 + 100));
  const uint64_t length = cut.size() - layer - 12;
  std::memcpy(&cut[layer + 4], &length, 8);
  cut.resize(cut.size() + 4);
  fix_crc(cut, layer);
  has(cut, "layer 0: truncated: field 'key_mean_pre' needs 512 bytes but only 100 remain");

  // A refused restore leaves the cache as it was.
  auto bad = layer_edit(pre + 4, &nan, 4);
  const CacheFile f = parse_cache_file(bad.data(), bad.size(), "bad");
  KvCache target(o);
  EXPECT_THROW(restore_cache_sequence(target, f), Error);
  EXPECT_FALSE(target.has_sequence(0));
}

TEST(CacheFileRope, RefusesAnotherRopeSettingNamingIt) {
  const KvCacheOptions o = rope_options("paper", "paper");
  KvCache cache(o);
  const SequenceId seq = fill(cache, 40, 0, 5);
  const auto bytes = serialize_cache_sequence(cache, seq, owner_for(o), ids(40), {});
  const CacheFile file = parse_cache_file(bytes.data(), bytes.size(), "x.pqkv");
  auto refused = [&](const KvCacheOptions& other, const std::string& words) {
    expect_refused(file, "x.pqkv", other, words);
  };
  KvCacheOptions other = o;
  other.key_rope_inv_freq.clear();
  refused(other, "RoPE-aware key centering (1: --rope-center) 1, but this run has 0");
  other = o;
  other.key_rope_neox = true;
  refused(other, "RoPE pairs (1: neox, 0: interleaved) 0, but this run has 1");
  other = o;
  other.key_rope_inv_freq = rope_inv_freq(64, 500000.0);  // pair 0 turns at 1 for any base
  refused(other, "RoPE frequency 1 (key_rope_inv_freq) 0.749894");
  other.key_rope_inv_freq = o.key_rope_inv_freq;
  other.key_rope_inv_freq[31] = std::nextafter(other.key_rope_inv_freq[31], 1.0f);
  refused(other, "RoPE frequency 31 (key_rope_inv_freq)");

  // A file without it does not load into a cache with it, checked or not.
  KvCacheOptions plain = o;
  plain.key_rope_inv_freq.clear();
  KvCache without(plain);
  const SequenceId s = fill(without, 40, 0, 5);
  const auto plain_bytes = serialize_cache_sequence(without, s, owner_for(plain), ids(40), {});
  EXPECT_NE(format_error(plain_bytes, o)
                .find("RoPE-aware key centering (1: --rope-center) 0, but "
                      "this run has 1"),
            std::string::npos);
  const CacheFile pf = parse_cache_file(plain_bytes.data(), plain_bytes.size(), "plain");
  KvCache target(o);
  try {
    restore_cache_sequence(target, pf);
    ADD_FAILURE() << "restored a file without key_mean_pre into a RoPE-centered cache";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("key_mean_pre floats 0, but this cache's RoPE-aware "
                                         "centering needs 128"),
              std::string::npos)
        << e.what();
  }
}

// One set per layer needs version 3 (a version 2 file claiming one is malformed), and a cache
// restores such a file only with the same set at every layer.
TEST(CacheFileRope, PerLayerSetsNeedVersion3AndTheSameSets) {
  const KvCacheOptions o = rope_options("paper", "q4_0", true, true);
  KvCache cache(o);
  const SequenceId seq = fill(cache, 100, 4, 7);
  const auto bytes = serialize_cache_sequence(cache, seq, owner_for(o), ids(104), {});
  ASSERT_EQ(format_error(bytes, o), "");
  auto v2 = bytes;
  v2[8] = 2;  // the version is outside the sections' checksums
  EXPECT_NE(format_error(v2, o).find("a version 2 file with 64 RoPE frequencies (one set per "
                                     "layer, 2 layers): per-layer sets need version 3"),
            std::string::npos)
      << format_error(v2, o);
  // A count that is neither form, in a version 3 file.
  auto n48 = bytes;
  const uint32_t count = 48;
  std::memcpy(&n48[head_rope_field(bytes, 64) + 2], &count, 4);
  fix_crc(n48, section_offset(n48, 0));
  EXPECT_NE(format_error(n48, o).find("with 48 frequencies, head_dim 64, n_layers 2"),
            std::string::npos)
      << format_error(n48, o);

  const CacheFile file = parse_cache_file(bytes.data(), bytes.size(), "layers.pqkv");
  auto refused = [&](const std::vector<float>& freq, const std::string& words) {
    KvCacheOptions other = o;
    other.key_rope_inv_freq = freq;
    expect_refused(file, "layers.pqkv", other, words);
  };
  const auto local = rope_inv_freq(64), global = rope_inv_freq(64, 1e6);
  auto sets = [](const std::vector<float>& a, const std::vector<float>& b) {
    auto f = a;
    f.insert(f.end(), b.begin(), b.end());
    return f;
  };
  refused(sets(global, local), "layer 0's RoPE frequency 1 (key_rope_inv_freq) 0.749894");
  refused(local, "layer 1's RoPE frequency 1 (key_rope_inv_freq) 0.649381");
  refused(local,
          "(the file stores 64 (one set per layer) frequencies, this run 32 (one set for "
          "every layer))");
  auto nudged = o.key_rope_inv_freq;
  nudged[32 + 31] = std::nextafter(nudged[32 + 31], 1.0f);
  refused(nudged, "layer 1's RoPE frequency 31 (key_rope_inv_freq)");

  // One set for every layer and per-layer sets that all equal it store the same bytes: either
  // file restores into either cache.
  KvCacheOptions one = o, each = o;
  one.key_rope_inv_freq = local;
  each.key_rope_inv_freq = sets(local, local);
  KvCache one_cache(one);
  const SequenceId s = fill(one_cache, 100, 4, 7);
  const auto one_bytes = serialize_cache_sequence(one_cache, s, owner_for(one), ids(104), {});
  EXPECT_EQ(format_error(one_bytes, each), "");
  auto one_v2 = one_bytes;  // one set for every layer: the same bytes as version 2 wrote
  one_v2[8] = 2;
  EXPECT_EQ(format_error(one_v2, one), "");
  KvCache each_cache(each);
  const SequenceId e = fill(each_cache, 100, 4, 7);
  const auto each_bytes = serialize_cache_sequence(each_cache, e, owner_for(each), ids(104), {});
  EXPECT_EQ(format_error(each_bytes, one), "");
  EXPECT_NE(format_error(each_bytes, o).find("layer 1's RoPE frequency 1"), std::string::npos);
}

// A version 1 file (tests/data, see CacheFile.ReadsAVersion1FileWrittenWithOnePagePerAllocation)
// holds no RoPE-aware centering: a cache with it refuses the file, checked or not.
TEST(CacheFileRope, Version1FilesLoadOnlyWithoutRopeCentering) {
  const std::string path =
      std::string(POLARQUANT_SOURCE_DIR) + "/tests/data/cache_v1_paper_q4_0.pqkv";
  const auto bytes = read_file_bytes(path);
  KvCacheOptions o = rope_options("paper", "q4_0");
  o.n_layers = 1;
  o.head_dim = 32;
  o.key_rope_inv_freq = rope_inv_freq(32);
  const CacheFile file = parse_cache_file(bytes.data(), bytes.size(), path);
  KvCache cache(o);
  try {
    check_cache_file_matches(file, cache, owner_for(o));
    ADD_FAILURE() << "a version 1 file passed the check of a RoPE-centered cache";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is of version 1, which does not store RoPE-aware key "
                                         "centering (--rope-center)"),
              std::string::npos)
        << e.what();
  }
  try {
    restore_cache_sequence(cache, file);
    ADD_FAILURE() << "a version 1 file restored into a RoPE-centered cache";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("(a version 1 file holds none)"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(cache.has_sequence(0));
}

// The fuzz target's RoPE-centered seeds (fuzz/corpus/cache_file), one set for every layer and one
// per layer; POLARQUANT_WRITE_FUZZ_SEEDS=1 rewrites them, as CacheFile.FuzzSeedsAreCurrent does
// the others.
TEST(CacheFileRope, FuzzSeedIsCurrent) {
  for (const bool per_layer : {false, true}) {
    KvCacheOptions o = rope_options("paper", "q4_0");
    o.head_dim = 32;
    o.n_kv_heads = 1;
    o.key_rope_inv_freq = rope_inv_freq(32);
    if (per_layer) {
      const auto global = rope_inv_freq(32, 1e6);
      o.key_rope_inv_freq.insert(o.key_rope_inv_freq.end(), global.begin(), global.end());
    }
    KvCache cache(o);
    const SequenceId seq = fill(cache, 70, 3, 1);
    const auto bytes =
        serialize_cache_sequence(cache, seq, owner_for(o), ids(73), std::vector<float>(100, 1.0f));
    const std::string path = std::string(POLARQUANT_SOURCE_DIR) +
                             "/fuzz/corpus/cache_file/paper_q4_0_rope" +
                             (per_layer ? "_layers" : "") + ".pqkv";
    const char* write = std::getenv("POLARQUANT_WRITE_FUZZ_SEEDS");
    if (write != nullptr && std::string(write) == "1") write_file_bytes(path, bytes);
    if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " absent";
    EXPECT_EQ(read_file_bytes(path), bytes) << path << " is stale: rerun with "
                                            << "POLARQUANT_WRITE_FUZZ_SEEDS=1";
  }
}

}  // namespace
}  // namespace polarquant
