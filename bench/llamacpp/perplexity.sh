#!/usr/bin/env bash
# Perplexity agreement with llama.cpp: llama-perplexity (built from the same llama-cpp-python sdist
# as run.sh) with -fa -ctk/-ctv f16|q8_0|q4_0 beside `polarquant perplexity` with the same caches,
# model, text, context and chunks. Run by hand after bench/llamacpp/run.sh (which fetches the
# sources); not part of the build or the tests.
#
#   bash bench/llamacpp/perplexity.sh [TEXT] [CTX] [CHUNKS]
set -euo pipefail

VERSION=0.3.16
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${WORK:-$ROOT/build/llamacpp}
BUILD=${POLARQUANT_BUILD:-$ROOT/build/rel}
MODEL=${MODEL:-$HOME/.cache/polarquant/models/SmolLM2-135M-Instruct.Q4_1.gguf}
TEXT=${1:-$ROOT/../shared/data/emma.txt}
CTX=${2:-1024}
CHUNKS=${3:-4}
THREADS=${THREADS:-1}
ggml_build="$WORK/ggml-native"
[[ -d $ggml_build ]] || { echo "run bench/llamacpp/run.sh first" >&2; exit 1; }
cmake --build "$ggml_build" -j "${JOBS:-$(nproc)}" --target llama-perplexity >> "$ggml_build.log" 2>&1
cmake --build "$BUILD" -j "${JOBS:-$(nproc)}" --target polarquant_cli

echo "llama.cpp (llama-cpp-python $VERSION), -fa, $CTX-token chunks x $CHUNKS:"
for t in f16 q8_0 q4_0; do
  ppl=$("$ggml_build/bin/llama-perplexity" -m "$MODEL" -f "$TEXT" -c "$CTX" --chunks "$CHUNKS" \
    -fa -ctk "$t" -ctv "$t" -t "$THREADS" 2>&1 | grep -o 'Final estimate: PPL = [0-9.]*')
  echo "  $t: $ppl"
done
echo "polarquant (no sink, no key centering, as llama.cpp):"
"$BUILD/polarquant" perplexity -m "$MODEL" -f "$TEXT" -c "$CTX" --chunks "$CHUNKS" --sink 0 \
  --no-center-keys --codecs f16,q8_0,q4_0,paper -t "$THREADS" 2>&1 | grep -v '^perplexity:'
