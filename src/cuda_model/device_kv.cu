#include "cuda_model/device_kv.h"

#include <polarquant/error.h>
#include <polarquant/polar_codec.h>

#include "cuda_model/model_kernels.h"

namespace polarquant::cuda {

namespace {

[[noreturn]] void no_kernels(const std::string& name) {
  throw Error(
      ErrorKind::kUnsupported,
      "codec '" + name +
          "' has no CUDA kernels: the CUDA runtime takes f16 and the PolarQuant presets (" +
          [] {
            std::string list;
            for (const std::string& p : polar_preset_names())
              list += (list.empty() ? "" : ", ") + p;
            return list;
          }() +
          "); use --device cpu for the others");
}

std::unique_ptr<PolarCodec> polar_codec(const std::string& name, int head_dim, uint64_t seed) {
  std::unique_ptr<Codec> codec = make_codec(name, head_dim, seed);
  auto* polar = dynamic_cast<PolarCodec*>(codec.get());
  if (polar == nullptr) no_kernels(name);
  codec.release();
  return std::unique_ptr<PolarCodec>(polar);
}

}  // namespace

size_t DeviceKvCodec::page_bytes_of(const std::string& name, int head_dim, int n_kv_heads,
                                    int page_tokens, uint64_t seed) {
  if (name == "f16") return F16Layout{head_dim, n_kv_heads, page_tokens}.page_bytes();
  const std::unique_ptr<PolarCodec> polar = polar_codec(name, head_dim, seed);
  return device_head_bytes(polar->config(), page_tokens,
                           fastest_page_layout(polar->config(), page_tokens)) *
         static_cast<size_t>(n_kv_heads);
}

DeviceKvCodec::DeviceKvCodec(const std::string& name, int head_dim, int n_kv_heads, int page_tokens,
                             uint64_t seed, bool need_device)
    : name_(name) {
  f16_ = F16Layout{head_dim, n_kv_heads, page_tokens};
  if (name == "f16") {
    page_bytes_ = f16_.page_bytes();
    return;
  }
  const std::unique_ptr<PolarCodec> codec = polar_codec(name, head_dim, seed);
  if (head_dim != 64 && head_dim != 128 && head_dim != 256) {
    throw Error(ErrorKind::kUnsupported,
                "codec '" + name + "' on the GPU: head_dim " + std::to_string(head_dim) +
                    " (the PolarQuant CUDA kernels take head_dim 64, 128 or 256; f16 takes any)");
  }
  if (need_device) {
    polar_ = std::make_unique<CudaPolarCodec>(*codec, page_tokens, n_kv_heads,
                                              fastest_page_layout(codec->config(), page_tokens));
    page_bytes_ = polar_->page_bytes();
  } else {
    page_bytes_ = page_bytes_of(name, head_dim, n_kv_heads, page_tokens, seed);
  }
}

void DeviceKvCodec::store(uint8_t* pool, const int32_t* page_tables, int max_pages,
                          const int32_t* positions, bool batch_rows, size_t first, int n,
                          const float* x, Stream stream) const {
  if (polar_ == nullptr) {
    f16_store(f16_, pool, page_tables, max_pages, positions, batch_rows, first, n, x, stream);
  } else if (batch_rows) {
    encode_append(*polar_, pool, page_tables, max_pages, positions, n, x, false, stream);
  } else {
    encode_prefill(*polar_, SequencePages{pool, page_tables}, first, static_cast<size_t>(n), x,
                   false, stream);
  }
}

void DeviceKvCodec::load_half(const uint8_t* pool, const int32_t* table, size_t first, int n,
                              size_t stride, __half* out, float* scratch, Stream stream) const {
  if (n <= 0) return;
  if (polar_ == nullptr) {
    f16_gather(f16_, pool, table, first, n, stride, out, stream);
    return;
  }
  dequantize(*polar_, SequencePages{const_cast<uint8_t*>(pool), table}, first,
             static_cast<size_t>(n), scratch, false, stream);
  to_head_major_half(scratch, n, f16_.n_kv_heads, f16_.head_dim, stride,
                     out + first * f16_.head_dim, stream);
}

size_t kv_bytes_per_token(const model::LlamaConfig& c, const std::string& key_codec,
                          const std::string& value_codec, int page_tokens, uint64_t seed) {
  const size_t page =
      DeviceKvCodec::page_bytes_of(key_codec, c.head_dim, c.n_kv_heads, page_tokens, seed) +
      DeviceKvCodec::page_bytes_of(value_codec, c.head_dim, c.n_kv_heads, page_tokens, seed);
  return page * static_cast<size_t>(c.n_layers) / static_cast<size_t>(page_tokens);
}

}  // namespace polarquant::cuda
