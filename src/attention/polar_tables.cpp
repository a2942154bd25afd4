#include <algorithm>
#include <cmath>

#include "attention/kernels.h"

namespace polarquant {
namespace {

// The first `entries` level-1 score-table entries of each pair of each of the g heads as int8
// (round(entry / scale), clamped to +-127) into out[(h * pairs + n) * entries + c], with one
// scale per head, the largest |entry| / 127, into tables.a1_i8_scale.
void int8_tables(PolarTables& tables, int g, int pairs, int size1, int entries,
                 std::vector<int8_t>& out) {
  out.resize(static_cast<size_t>(g) * pairs * entries);
  tables.a1_i8_scale.resize(g);
  for (int h = 0; h < g; ++h) {
    const float* a1 = &tables.a1[static_cast<size_t>(h) * pairs * size1];
    float amax = 0.0f;
    for (int n = 0; n < pairs; ++n) {
      for (int c = 0; c < entries; ++c) amax = std::max(amax, std::fabs(a1[n * size1 + c]));
    }
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    tables.a1_i8_scale[h] = amax / 127.0f;
    int8_t* row = &out[static_cast<size_t>(h) * pairs * entries];
    for (int n = 0; n < pairs; ++n) {
      for (int c = 0; c < entries; ++c) {
        const float v = std::nearbyint(a1[n * size1 + c] * inv);
        row[n * entries + c] = static_cast<int8_t>(std::clamp(v, -127.0f, 127.0f));
      }
    }
  }
}

}  // namespace

void build_polar_tables(const PolarPageFormat& format, const float* q_rotated, int g,
                        PolarTables& tables, bool int8_score_tables) {
  const PolarCodec& codec = format.polar();
  const PolarConfig& config = codec.config();
  tables.layout = &format.layout();
  tables.radius = config.radius;
  tables.dim = config.dim;
  tables.levels = config.levels;
  for (int l = 0; l < config.levels; ++l) {
    const int bits = config.bits[l];
    tables.bits[l] = bits;
    for (int i = 0; i < 16; ++i) {
      tables.lane_shifts[l][i] = interleaved_codes(bits) ? bits * (i / (2 * bits)) : 0;
    }
    tables.multishift[l] = 0;
    for (int i = 0; i < 8; ++i) tables.multishift[l] |= static_cast<uint64_t>(i * bits) << (8 * i);
    const Codebook& book = codec.codebooks()[l];
    const int size = PolarTables::table_size(bits);
    tables.cos[l].resize(size);
    tables.sin[l].resize(size);
    // Tables of up to 16 entries repeat the codebook: the SIMD unpacker leaves higher code bits
    // in each lane and vpermps reads only the low 4.
    for (int c = 0; c < size; ++c) {
      tables.cos[l][c] = book.cosines()[c % book.size()];
      tables.sin[l][c] = book.sines()[c % book.size()];
    }
  }
  tables.level1_half_turn = config.bits[0] == 4 || config.bits[0] == 5;
  const int turn = config.bits[0] == 5 ? 16 : 8;
  for (int c = 0; c < turn && tables.level1_half_turn; ++c) {
    tables.level1_half_turn = std::fabs(tables.cos[0][c + turn] + tables.cos[0][c]) <= 0x1p-20f &&
                              std::fabs(tables.sin[0][c + turn] + tables.sin[0][c]) <= 0x1p-20f;
  }
  if (q_rotated == nullptr) return;
  const int pairs = config.dim / 2;
  const int size1 = PolarTables::table_size(config.bits[0]);
  tables.a1.assign(static_cast<size_t>(g) * pairs * size1, 0.0f);
  for (int h = 0; h < g; ++h) {
    const float* q = q_rotated + static_cast<size_t>(h) * config.dim;
    for (int n = 0; n < pairs; ++n) {
      float* row = &tables.a1[(static_cast<size_t>(h) * pairs + n) * size1];
      for (int c = 0; c < size1; ++c) {
        row[c] = q[2 * n] * tables.cos[0][c] + q[2 * n + 1] * tables.sin[0][c];
      }
    }
  }
  tables.a1_i8.clear();
  tables.a1_i8_scale.clear();
  tables.a1_i8_pair.clear();
  if (!int8_score_tables) return;
  const bool paper = is_paper_allocation(tables);
  if (!paper && config.levels >= 3 &&
      (config.bits[0] == 4 || (config.bits[0] == 5 && tables.level1_half_turn))) {
    // 16 entries per pair for the AVX2 integer score kernel of the other allocations: all of a
    // 4-bit level 1, the first half of a 5-bit one (entry c + 16 is the negation); one scale per
    // head.
    int8_tables(tables, g, pairs, size1, 16, tables.a1_i8_pair);
    if (polar_i8_q15_levels(tables)) {
      for (int l = 0; l < 2; ++l) {
        for (int k = 0; k < 2; ++k) {
          for (int c = 0; c < 16; ++c) {
            const float x = (k == 0 ? tables.cos : tables.sin)[l + 1][c];
            tables.q15[l][k][c] =
                static_cast<int16_t>(std::min(std::nearbyint(x * 32768.0f), 32767.0f));
          }
        }
      }
    }
    return;
  }
  if (!tables.level1_half_turn || config.bits[0] != 4 || pairs % 2 != 0) return;
  // int8 copies for the AVX2 integer score kernel: codes 0..7 of each pair (pair n at couple
  // n / 2, half n % 2: offset 8 n), one scale per head.
  int8_tables(tables, g, pairs, size1, 8, tables.a1_i8);
}

}  // namespace polarquant
