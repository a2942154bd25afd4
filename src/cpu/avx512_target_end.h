// Closes the region avx512_target_begin.h opened. No include guard.
#pragma GCC diagnostic pop
#pragma GCC pop_options
