#!/usr/bin/env bash
# llama.cpp's intermediate tensors for one prompt, in full, for finding where exo's numerics
# leave llama.cpp's (compare with the engine's EXO_DUMP_DIR dumps: scripts/compare-dumps.py).
#
#   scripts/llamacpp-dump.sh -m MODEL.gguf (--ids 1,2,3 | -p TEXT) -o DIR [--filter P1,P2] [-t N]
#
# Writes DIR/NAME.f32 (raw f32, ggml order) for every graph tensor whose name starts with a
# --filter prefix (default: all of them; e.g. `--filter l_out,attn_norm,ffn_out,kqv_out`) and
# DIR/index.tsv; prints the prompt's token ids. Flash attention on, no repacking,
# GGML_CPU_TILED_MM=0, the prompt as one batch. Compiled once against the llama.cpp that
# scripts/llamacpp.sh builds (VARIANT=avx2 for its AVX-512-off build).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=llamacpp.sh
. "$here/llamacpp.sh"

tool=$(llamacpp_tool "${VARIANT:-native}" llamacpp-dump)
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[$i]}" = -o ] && mkdir -p "${args[$((i + 1))]}"
done
exec "$tool" "$@"
