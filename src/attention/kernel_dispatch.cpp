// Chooses the kernel set once per process from what the CPU reports.
#include "attention/kernels.h"

namespace polarquant {

const KernelSet& best_kernels() {
  static const KernelSet& best = avx512_kernels() ? *avx512_kernels() : scalar_kernels();
  return best;
}

std::vector<const KernelSet*> available_kernels() {
  std::vector<const KernelSet*> sets{&scalar_kernels()};
  if (const KernelSet* k = avx512_kernels()) sets.push_back(k);
  return sets;
}

}  // namespace polarquant
