// Chooses the kernel set once per process from what the CPU reports, or from POLARQUANT_CPU.
#include <cstdio>
#include <cstdlib>

#include "attention/kernels.h"

namespace polarquant {

std::vector<const KernelSet*> available_kernels() {
  std::vector<const KernelSet*> sets{&scalar_kernels()};
  if (const KernelSet* k = avx2_kernels()) sets.push_back(k);
  if (const KernelSet* k = avx512_kernels()) sets.push_back(k);
  return sets;
}

const KernelSet* kernels_named(const std::string& target) {
  for (const KernelSet* k : available_kernels()) {
    if (k->name == target) return k;
  }
  return nullptr;
}

const KernelSet& kernels_for(const char* target) {
  const KernelSet& fastest = *available_kernels().back();
  if (target == nullptr || *target == '\0') return fastest;
  if (const KernelSet* k = kernels_named(target)) return *k;
  std::fprintf(stderr,
               "polarquant: POLARQUANT_CPU=%s is not a kernel set this CPU runs (scalar, avx2, "
               "avx512); using %s\n",
               target, fastest.name.c_str());
  return fastest;
}

const KernelSet& best_kernels() {
  static const KernelSet& best = kernels_for(std::getenv("POLARQUANT_CPU"));
  return best;
}

}  // namespace polarquant
