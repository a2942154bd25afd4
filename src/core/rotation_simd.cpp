// SIMD twin of the dense rotation's inner loop (out = sum_j in[j] * rows[j, :]), compiled for every
// Highway target and dispatched once per call. The scalar twin is combine_rows_scalar in
// rotation.cpp; tests hold the two together.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "core/rotation_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "core/rotation_simd.h"

HWY_BEFORE_NAMESPACE();
namespace polarquant {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

void CombineRows(const float* rows, const float* in, float* out, int dim) {
  const hn::ScalableTag<float> d;
  const size_t lanes = hn::Lanes(d);
  const size_t n = static_cast<size_t>(dim);
  size_t k = 0;
  // Four independent accumulators hide the FMA latency.
  for (; k + 4 * lanes <= n; k += 4 * lanes) {
    auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
    for (size_t j = 0; j < n; ++j) {
      const auto c = hn::Set(d, in[j]);
      const float* r = rows + j * n + k;
      a0 = hn::MulAdd(c, hn::LoadU(d, r), a0);
      a1 = hn::MulAdd(c, hn::LoadU(d, r + lanes), a1);
      a2 = hn::MulAdd(c, hn::LoadU(d, r + 2 * lanes), a2);
      a3 = hn::MulAdd(c, hn::LoadU(d, r + 3 * lanes), a3);
    }
    hn::StoreU(a0, d, out + k);
    hn::StoreU(a1, d, out + k + lanes);
    hn::StoreU(a2, d, out + k + 2 * lanes);
    hn::StoreU(a3, d, out + k + 3 * lanes);
  }
  for (; k + lanes <= n; k += lanes) {
    auto a = hn::Zero(d);
    for (size_t j = 0; j < n; ++j)
      a = hn::MulAdd(hn::Set(d, in[j]), hn::LoadU(d, rows + j * n + k), a);
    hn::StoreU(a, d, out + k);
  }
  for (; k < n; ++k) {
    float a = 0.0f;
    for (size_t j = 0; j < n; ++j) a += in[j] * rows[j * n + k];
    out[k] = a;
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace polarquant
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace polarquant {
HWY_EXPORT(CombineRows);

void combine_rows_simd(const float* rows, const float* in, float* out, int dim) {
  HWY_DYNAMIC_DISPATCH(CombineRows)(rows, in, out, dim);
}

void combine_rows_all_targets(const float* rows, const float* in, float* out, int dim,
                              std::vector<std::pair<std::string, std::vector<float>>>* results) {
  for (uint32_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    std::vector<float> r(out, out + dim);
    HWY_DYNAMIC_DISPATCH(CombineRows)(rows, in, r.data(), dim);
    results->emplace_back(hwy::TargetName(target), std::move(r));
  }
  hwy::SetSupportedTargetsForTest(0);
}

}  // namespace polarquant
#endif
