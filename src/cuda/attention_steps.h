// The small steps around the split-KV attention kernel: rotating the queries before it and
// merging the splits' partial softmax states after it (attention_steps.cu).
#pragma once

#include <cuda_fp16.h>
#include <polarquant/cuda.h>

#include "cuda/device_codec.h"

namespace polarquant::cuda {

// q_rot[r] = S q[r] * q_scale in fp16, for `rows` query rows of dim floats.
void launch_rotate_query(const DeviceCodec& c, const float* q, int rows, float q_scale,
                         __half* q_rot, Stream stream);

// out[b][qh] = S^T (sum_s w_s acc_s / sum_s w_s l_s), w_s = 2^(m_s - max m), over the `splits`
// partial states of sequence b's KV head qh / g (rows of g query heads each). lse (optional):
// ln sum exp of the scores per output row (the partial states are in the log2 domain).
void launch_merge(const DeviceCodec& c, int batch, int n_q_heads, int g, int splits,
                  const float2* part_ml, const float* part_acc, float* out, float* lse,
                  Stream stream);

// Sets the shared-memory limits of the decode-attention kernels this codec runs over its own keys
// and values (up to 8 and up to 16 query heads per KV head) and measures their resident blocks per
// SM, once per process (decode_attention.cu; called by CudaPolarCodec's constructor). A key codec
// paired with another value codec has its kernel configured at its first decode_workspace_bytes or
// decode_attention call.
void configure_attention(const DeviceCodec& c);

}  // namespace polarquant::cuda
