// Opens the AVX-512 target region of a kernel file (attention_avx512_{rows,polar,paper}.cpp):
// the target pragma, GCC 12's spurious (un)initialized-use warnings from _mm*_undefined_*()
// silenced, <immintrin.h> and the shared lanes. Include inside `#if defined(__x86_64__) &&
// defined(__GNUC__)`, after every other header (they must not be compiled for AVX-512), and close
// the region with avx512_target_end.h. No include guard: each file opens its region once.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512vbmi,f16c,fma")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "cpu/avx512_lanes.h"
