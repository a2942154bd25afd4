#!/usr/bin/env bash
# The GPU benchmark in one command, for the GPU machine: builds the CUDA targets if BUILD lacks
# them, then runs decode_bench beside PyTorch SDPA (bench/cuda/sdpa_compare.py).
# Usage: bench/cuda/run.sh [BUILD_DIR] [--quick] [--preset NAME] [--batch N] [--context N] [--dim D]
#        [--q-heads N] [--layout host|pairs|fastest] [--no-flashinfer]
# FlashInfer (an anchor, benchmark only) is used when it imports; sdpa_compare.py says how to carry
# its wheels to a machine without network.
set -euo pipefail
build=${1:-build/cuda}
shift || true
if [[ ! -x "$build/polarquant_cuda_bench" ]]; then
  cmake -S "$(dirname "$0")/../.." -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
  cmake --build "$build" --target polarquant_cuda_bench
fi
PYTHONUNBUFFERED=1 python3 "$(dirname "$0")/sdpa_compare.py" "$build/polarquant_cuda_bench" "$@"
