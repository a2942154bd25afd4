// The one place where runtime sizes become template parameters of the kernels.
#pragma once

#include <polarquant/error.h>

#include <string>
#include <type_traits>

namespace polarquant::cuda {

// Calls f(std::integral_constant<int, D>{}) for head_dim D in {64, 128, 256}.
template <class F>
void with_dim(int dim, F&& f) {
  switch (dim) {
    case 64:
      f(std::integral_constant<int, 64>{});
      return;
    case 128:
      f(std::integral_constant<int, 128>{});
      return;
    case 256:
      f(std::integral_constant<int, 256>{});
      return;
    default:
      throw Error(ErrorKind::kUnsupported,
                  "CUDA kernels: head_dim " + std::to_string(dim) + " (supported: 64, 128, 256)");
  }
}

}  // namespace polarquant::cuda
