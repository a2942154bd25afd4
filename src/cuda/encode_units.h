// The fast encoder for codecs of four or more levels (`paper`, `polar37`, ...): one warp per
// 16-coordinate unit of a 32-slot chunk (encode_units.cu).
#pragma once

#include <polarquant/cuda.h>

#include <cstddef>
#include <cstdint>

namespace polarquant::cuda {

// Enqueues the units encoder for `jobs` chunks (the arguments of the common launcher of
// encode_prefill and encode_append) and returns true, or returns false without doing anything when
// the codec or the input does not suit it (fewer than four levels, input rows not 16-byte
// aligned): the caller then runs the generic encoder.
bool launch_encode_units(const CudaPolarCodec& codec, uint8_t* pool, const int32_t* tables,
                         int max_pages, const int32_t* positions, size_t first, size_t n, int jobs,
                         const float* x, bool rotated, Stream stream);

}  // namespace polarquant::cuda
