// Shared pieces of the AVX-512 kernels (attention_avx512_rows.cpp, attention_avx512_polar.cpp,
// attention_avx512_paper.cpp): the tail mask, the head group and the count-to-template helper.
// Included by avx512_target_begin.h, inside the AVX-512 target region, after every header this one
// includes (see attention_avx512_rows.cpp).
#pragma once

#include <cstddef>
#include <type_traits>
#include <utility>

namespace polarquant::avx512 {

inline __mmask16 tail_mask(size_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

constexpr int kHeadGroup = 8;  // query heads scored per pass over the codes

// Calls f(std::integral_constant<int, v>{}) when Lo <= v <= Hi and returns true; false otherwise.
// The one place where a run-time count (heads of a pass, levels) becomes a template parameter.
template <int Lo, int Hi, class F>
bool with_count(int v, F&& f) {
  if constexpr (Lo > Hi) {
    return false;
  } else {
    if (v == Lo) {
      f(std::integral_constant<int, Lo>{});
      return true;
    }
    return with_count<Lo + 1, Hi>(v, std::forward<F>(f));
  }
}

}  // namespace polarquant::avx512
