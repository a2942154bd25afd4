// The encoder (every codec the kernels support: four to eight levels): one warp per 16-coordinate
// unit of a 32-slot chunk (encode_units.cu).
#pragma once

#include <polarquant/cuda.h>

#include "cuda/device_codec.h"

#include <cstddef>
#include <cstdint>

namespace polarquant::cuda {

// Enqueues the encoder for `jobs` chunks (the common launcher of encode_prefill and
// encode_append: prefill chunks of positions [first, first + n), or one appended token per
// sequence at device-side positions).
void launch_encode_units(const CudaPolarCodec& codec, uint8_t* pool, const int32_t* tables,
                         int max_pages, const int32_t* positions, size_t first, size_t n, int jobs,
                         const float* x, bool rotated, Stream stream);

// Sets the shared-memory limits of the encoder's two variants (rotating, and for rotated input)
// for this codec; called once, by CudaPolarCodec's constructor.
void configure_encode_units(const DeviceCodec& c);

// The same for the dequantizer (encode.cu).
void configure_dequantize(const DeviceCodec& c);

}  // namespace polarquant::cuda
