// Compile-time checks of paper_decode.cuh's shared-memory image (PaperSmem) of the host layout:
// included by paper_decode.cuh after PaperSmem; nothing here generates code.
#pragma once

namespace polarquant::cuda {

// Compile-time checks of a PaperSmem image (static_asserts below each decoder use them): the copy
// places every chunk once inside the image, and the loads the decoders issue together hit distinct
// banks (two lanes may share a word, never a bank with different words).
namespace paper_smem_check {
struct Words {
  int word[64];
  int n = 0;
};
// Adds the 4-byte words of a load of `bytes` at `at`; false once two words share a bank.
constexpr bool add(Words& w, int at, int bytes) {
  for (int b = 0; b < bytes; b += 4) {
    const int word = (at + b) / 4;
    bool seen = false;
    for (int i = 0; i < w.n; ++i) {
      if (w.word[i] == word) seen = true;
      if (w.word[i] != word && w.word[i] % 32 == word % 32) return false;
    }
    if (!seen) w.word[w.n++] = word;
  }
  return true;
}
template <int D>
constexpr bool chunks_fit() {
  using S = PaperSmem<D>;
  constexpr int n = PaperLayout<D>::kUsedBytes / 16;
  for (int c = 0; c < n; ++c) {
    const int at = S::chunk(c);
    if (at % 16 != 0 || at < 0 || at + 16 > S::kBytes) return false;
    for (int d = 0; d < c; ++d) {
      if (S::chunk(d) == at) return false;
    }
  }
  return true;
}
// The byte offset and size of load `kind` of one lane for block u and slot base `slot`: radii
// (kind 0..3: slots + 4 kind), level 4, level 3 (j = 0, 1), level 2 (j = 0..3), level 1
// (pair p = 0..7, from first pair p0).
template <int D>
constexpr int load_at(int kind, int u, int grp, int slot, int p0) {
  using S = PaperSmem<D>;
  return kind < 4    ? S::radius(u) + 2 * (slot + 4 * kind)
         : kind < 5  ? S::level4(u) + 4 * grp
         : kind < 7  ? S::level3(u) + 8 * (kind - 5) + 4 * grp
         : kind < 11 ? S::level2(u) + 8 * (kind - 7) + 4 * grp
                     : S::level1(u) + 16 * (p0 + kind - 11) + 8 * grp;
}
constexpr int load_bytes(int kind) {
  return kind < 4 ? 2 : kind < 11 ? 4 : 8;
}
// K lanes (t, m, e) load blocks u = t + 4 beta together, for the slots m + 8e (+ 4);
// V lanes (g, t) blocks u = g + 8 unit (D >= 128) or g / 2 (D = 64, half block p0 = 4 (g % 2)),
// for the slots t + 4k.
template <int D>
constexpr bool k_loads_conflict_free() {
  for (int beta = 0; beta < D / 64; ++beta) {
    for (int grp = 0; grp < 2; ++grp) {
      for (int kind = 0; kind < 19; ++kind) {
        if (kind >= 2 && kind < 4) continue;  // K loads two radii per block
        Words w;
        for (int lane = 0; lane < 32; ++lane) {
          const int t = lane % 4, m = (lane / 4) / 2, e = (lane / 4) % 2;
          const int at = load_at<D>(kind, t + 4 * beta, grp, 16 * grp + m + 8 * e, 0);
          if (!add(w, at, load_bytes(kind))) return false;
        }
      }
    }
  }
  return true;
}
template <int D>
constexpr bool v_loads_conflict_free() {
  for (int unit = 0; unit < (D >= 128 ? D / 128 : 1); ++unit) {
    for (int grp = 0; grp < 2; ++grp) {
      for (int kind = 0; kind < (D >= 128 ? 19 : 15); ++kind) {
        Words w;
        for (int lane = 0; lane < 32; ++lane) {
          const int g = lane / 4, t = lane % 4;
          const int u = D >= 128 ? g + 8 * unit : g / 2, p0 = D >= 128 ? 0 : 4 * (g % 2);
          if (!add(w, load_at<D>(kind, u, grp, 16 * grp + t, p0), load_bytes(kind))) return false;
        }
      }
    }
  }
  return true;
}
template <int D>
constexpr bool valid() {
  return chunks_fit<D>() && k_loads_conflict_free<D>() && v_loads_conflict_free<D>();
}
}  // namespace paper_smem_check
static_assert(paper_smem_check::valid<64>() && paper_smem_check::valid<128>() &&
                  paper_smem_check::valid<256>(),
              "PaperSmem: a chunk misplaced or a decoder load with a bank conflict");

}  // namespace polarquant::cuda
