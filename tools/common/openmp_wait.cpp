// Passive OpenMP waiting by default, for the executables (the `polarquant` command and the test
// binary; CMakeLists.txt adds this file to each): a shared library cannot do this, since only an
// executable's .preinit_array runs before the libraries' constructors.
#include <cstdlib>

namespace {

// OpenMP threads that wait at the end of a parallel region spin by default (libgomp: up to
// 300,000 iterations). On a machine whose cores are busy with other work a spinning thread holds
// the core its partner needs, and every region waits for a scheduler time slice: `generate` with
// 2 threads on a 2-core VM running a build decoded 0.4-1.6 tokens/s, and 45-46 with this setting
// (docs/BENCHMARKS.md section 4). libgomp reads its settings in its own constructor, before
// main(), so the default is set from .preinit_array, which the loader runs before any shared
// library's constructors. A user's OMP_WAIT_POLICY or GOMP_SPINCOUNT is left as it is.
void passive_openmp_wait(int, char**, char**) {
  if (std::getenv("OMP_WAIT_POLICY") == nullptr && std::getenv("GOMP_SPINCOUNT") == nullptr) {
    setenv("OMP_WAIT_POLICY", "passive", 0);
    // Set this way, OMP_WAIT_POLICY alone left the threads spinning (measured: 0.4-1.6 tokens/s);
    // with GOMP_SPINCOUNT=0 too they wait passively (45-46).
    setenv("GOMP_SPINCOUNT", "0", 0);
  }
}
__attribute__((section(".preinit_array"),
               used)) void (*const kPassiveWait)(int, char**, char**) = passive_openmp_wait;

}  // namespace
