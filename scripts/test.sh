#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite: the release build, the Python
# package's tests (pytest in build/venv; skip with POLARQUANT_SKIP_PYTHON=1), then the
# AddressSanitizer + UndefinedBehaviorSanitizer build (skip it with POLARQUANT_SKIP_SANITIZERS=1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh release
ctest --preset release
if [ "${POLARQUANT_SKIP_PYTHON:-0}" != "1" ]; then
  POLARQUANT_CLI="$PWD/build/release/polarquant" build/venv/bin/python -m pytest -q python/tests
fi
if [ "${POLARQUANT_SKIP_SANITIZERS:-0}" != "1" ]; then
  cmake --preset asan >/dev/null
  cmake --build --preset asan -j "$(nproc)"
  ctest --preset asan
fi
