// CudaPolarCodec: copies the codec's constants to the device once, and checks what the kernels
// support. Nothing here runs on the hot path.
#include <polarquant/cuda.h>
#include <polarquant/error.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cache/page_format.h"
#include "cache/pair_layout.h"
#include "cuda/attention_steps.h"
#include "cuda/device_codec.h"
#include "cuda/encode_units.h"

namespace polarquant::cuda {

void check_cuda(int code, const char* what) {
  if (code == 0) return;
  const auto err = static_cast<cudaError_t>(code);
  throw Error(ErrorKind::kState, std::string("CUDA: ") + what + " failed: " +
                                     cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

void allow_dynamic_smem(const void* kernel, size_t bytes, const char* what) {
  cudaFuncAttributes attr{};
  check_cuda(cudaFuncGetAttributes(&attr, kernel), what);
  if (bytes <= static_cast<size_t>(attr.maxDynamicSharedSizeBytes)) return;
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(bytes)),
             what);
}

bool device_available(std::string* why) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    if (why) *why = std::string("cudaGetDeviceCount: ") + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return false;
  }
  if (count == 0) {
    if (why) *why = "the CUDA runtime sees no device";
    return false;
  }
  return true;
}

namespace {

[[noreturn]] void unsupported(const std::string& message) {
  throw Error(ErrorKind::kUnsupported, "CudaPolarCodec: " + message);
}

// S as a dense matrix for any rotation kind: column j is forward(e_j). For kDense this is the
// codec's own matrix bit for bit, so GPU and CPU rotations agree exactly (same summation order).
std::vector<float> dense_rotation(const Rotation& rotation, int dim) {
  if (rotation.kind() == RotationKind::kDense) return rotation.matrix();
  std::vector<float> s(static_cast<size_t>(dim) * dim), e(dim), col(dim);
  for (int j = 0; j < dim; ++j) {
    std::fill(e.begin(), e.end(), 0.0f);
    e[j] = 1.0f;
    rotation.forward(e.data(), col.data(), 1);
    for (int i = 0; i < dim; ++i) s[static_cast<size_t>(i) * dim + j] = col[i];
  }
  return s;
}

}  // namespace

PageLayout fastest_page_layout(const PolarConfig& config, int page_tokens) {
  return has_pair_layout(config, page_tokens) ? PageLayout::kPairs : PageLayout::kHost;
}

size_t device_head_bytes(const PolarConfig& config, int page_tokens, PageLayout layout) {
  if (layout == PageLayout::kHost) return make_polar_page_layout(config, page_tokens).head_bytes;
  if (!has_pair_layout(config, page_tokens)) {
    unsupported("PageLayout::kPairs for codec '" + config.name + "' at dim " +
                std::to_string(config.dim) + " and " + std::to_string(page_tokens) +
                "-token pages: it needs the `paper` or `polar37` shape (bits 4/2/2/2 or "
                "4/3/3/3/3/3, fp16 radii), 32-token pages and dim 64, 128 or 256 (use "
                "PageLayout::kHost)");
  }
  return pair_layout::region_bytes(config.dim);
}

CudaPolarCodec::CudaPolarCodec(const PolarCodec& codec, int page_tokens, int n_kv_heads,
                               PageLayout page_layout)
    : device_(std::make_unique<DeviceCodec>()) {
  const PolarConfig& config = codec.config();
  if (config.levels < 4 || config.levels > kMaxLevels) {
    unsupported("levels " + std::to_string(config.levels) +
                " (the kernels decode 16-coordinate units: levels 4..8 are supported)");
  }
  if (config.dim != 64 && config.dim != 128 && config.dim != 256) {
    unsupported("dim " + std::to_string(config.dim) + " (supported: 64, 128, 256)");
  }
  if (page_tokens < 32 || page_tokens % 32 != 0) {
    unsupported("page_tokens " + std::to_string(page_tokens) +
                " (one warp lane per slot: a multiple of 32 is needed)");
  }
  if (n_kv_heads < 1) throw_invalid("CudaPolarCodec: n_kv_heads must be >= 1");
  const size_t head_bytes = device_head_bytes(config, page_tokens, page_layout);
  std::string why;
  if (!device_available(&why)) throw_state("CudaPolarCodec: no CUDA device: " + why);

  const PolarPageLayout layout = make_polar_page_layout(config, page_tokens);
  DeviceCodec& d = *device_;
  d.dim = config.dim;
  d.levels = config.levels;
  d.page_tokens = page_tokens;
  d.n_kv_heads = n_kv_heads;
  d.radius_kind = static_cast<int>(config.radius);
  d.radius_bytes = layout.radius_bytes;
  d.radii_offset = static_cast<uint32_t>(layout.radii_offset);
  d.head_bytes = static_cast<uint32_t>(head_bytes);
  d.host_head_bytes = static_cast<uint32_t>(layout.head_bytes);
  d.pairs = page_layout == PageLayout::kPairs;
  d.page_bytes = static_cast<uint64_t>(head_bytes) * n_kv_heads;
  std::vector<float> cosines, sines, bounds, cents, bcos, bsin;
  for (int l = 0; l < config.levels; ++l) {
    d.bits[l] = config.bits[l];
    d.level_offset[l] = static_cast<uint32_t>(layout.level_offset[l]);
    d.field_bytes[l] = static_cast<uint32_t>(layout.field_bytes[l]);
    d.table_offset[l] = static_cast<int>(cosines.size());
    const Codebook& book = codec.codebooks()[l];
    const int size = 1 << config.bits[l];
    for (int c = 0; c < size; ++c) {
      cosines.push_back(book.cosines()[c]);
      sines.push_back(book.sines()[c]);
      cents.push_back(book.centroids()[c]);
      bounds.push_back(c + 1 < size ? book.boundaries()[c] : INFINITY);
      // As PolarCodec's constructor computes them, so comparisons agree bit for bit.
      double angle = c + 1 < size ? book.boundaries()[c] : 0.0;
      constexpr double kPi = 3.14159265358979323846;
      if (l == 0 && c + 1 < size) {
        if (angle >= kPi) {
          angle -= kPi;
        } else {
          ++d.level1_upper;
        }
      }
      bcos.push_back(static_cast<float>(std::cos(angle)));
      bsin.push_back(static_cast<float>(std::sin(angle)));
    }
  }
  d.table_entries = static_cast<int>(cosines.size());
  {
    const std::vector<float>& b1 = codec.codebooks()[0].boundaries();
    double gap = INFINITY;
    for (size_t i = 1; i < b1.size(); ++i) {
      gap = std::min(gap, static_cast<double>(b1[i]) - static_cast<double>(b1[i - 1]));
    }
    d.level1_search = gap > 1e-3;
  }

  const std::vector<float> s = dense_rotation(codec.rotation(), config.dim);
  std::vector<float> st(s.size());
  for (int i = 0; i < config.dim; ++i)
    for (int j = 0; j < config.dim; ++j)
      st[static_cast<size_t>(j) * config.dim + i] = s[i * config.dim + j];

  // One allocation: S, S^T, then the four tables.
  std::vector<float> all;
  all.insert(all.end(), s.begin(), s.end());
  all.insert(all.end(), st.begin(), st.end());
  for (const auto* v : {&cosines, &sines, &bounds, &cents, &bcos, &bsin})
    all.insert(all.end(), v->begin(), v->end());
  check_cuda(cudaMalloc(&constants_, all.size() * sizeof(float)), "cudaMalloc(codec tables)");
  check_cuda(cudaMemcpy(constants_, all.data(), all.size() * sizeof(float), cudaMemcpyHostToDevice),
             "cudaMemcpy(codec tables)");
  const float* base = static_cast<const float*>(constants_);
  const size_t dd = s.size();
  d.rotation = base;
  d.rotation_t = base + dd;
  d.cos_table = base + 2 * dd;
  d.sin_table = d.cos_table + d.table_entries;
  d.boundaries = d.sin_table + d.table_entries;
  d.centroids = d.boundaries + d.table_entries;
  d.boundary_cos = d.centroids + d.table_entries;
  d.boundary_sin = d.boundary_cos + d.table_entries;

  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&multiprocessors_, cudaDevAttrMultiProcessorCount, device),
             "cudaDeviceGetAttribute(multiprocessors)");
  configure_encode_units(d);
  configure_dequantize(d);
  configure_attention(d);
}

CudaPolarCodec::~CudaPolarCodec() {
  if (constants_) cudaFree(constants_);  // errors here cannot be reported from a destructor
}

int CudaPolarCodec::dim() const {
  return device_->dim;
}
int CudaPolarCodec::page_tokens() const {
  return device_->page_tokens;
}
int CudaPolarCodec::n_kv_heads() const {
  return device_->n_kv_heads;
}
PageLayout CudaPolarCodec::layout() const {
  return device_->pairs ? PageLayout::kPairs : PageLayout::kHost;
}
size_t CudaPolarCodec::head_bytes() const {
  return device_->head_bytes;
}

}  // namespace polarquant::cuda
