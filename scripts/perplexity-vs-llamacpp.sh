#!/usr/bin/env bash
# Perplexity of exo's engine against llama.cpp's llama-perplexity on the same public-domain text
# (KJV Genesis 1-8, tests/fixtures/kjv-genesis-1-8.txt, or FILE), the test models (the 1.5B one
# when present), same chunking (CTX tokens per chunk, second half scored). llama.cpp runs in the
# configuration the engine follows (flash attention on, --no-repack, GGML_CPU_TILED_MM=0), and
# with flash attention off: the spread between its own two attention paths shows how much of a
# difference is rounding, not a bug. Prints llama.cpp's commit. Usage:
# scripts/perplexity-vs-llamacpp.sh [FILE]
#
# Environment: THREADS (default 2), CTX (512), CHUNKS (all), EXO_TEST_MODELS.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/llamacpp.sh
. "$root/scripts/llamacpp.sh"
text=${1:-$root/tests/fixtures/kjv-genesis-1-8.txt}
threads=${THREADS:-2}
ctx=${CTX:-512}
chunks=${CHUNKS:--1}
models_dir=${EXO_TEST_MODELS:-$HOME/.cache/exo-p2p/test-models}

ppl_bin=$(llamacpp_bin native llama-perplexity)
echo "building exo..." >&2
(cd "$root" && nice -n 5 cargo build -q --release -p exo-p2p >&2)
exo="$root/target/release/exo-p2p"

final() { sed -n 's/.*Final estimate: PPL = \([0-9.]*\) +\/- \([0-9.]*\).*/\1 \2/p'; }

printf '%-42s %5s %18s %18s %18s %8s\n' model ctx exo "llama.cpp fa=on" "llama.cpp fa=off" "exo/fa=on"
# The sdist's build does not know its git commit: it is the one llama-cpp-python pins.
echo "llama.cpp: commit 0c1e570 (llama-cpp-python $LLAMACPP_VER sdist), $("$ppl_bin" --version 2>&1 | grep -m1 'built with')" >&2
models=(gemma-3-270m-q4_k_m.gguf qwen2.5-coder-0.5b-instruct-q4_k_m.gguf)
big=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
[ -f "$models_dir/$big" ] && models+=("$big") || echo "note: $big is missing (fetch-test-models.sh --large)" >&2
for m in "${models[@]}"; do
  path="$models_dir/$m"
  [ -f "$path" ] || { echo "missing $path: run scripts/fetch-test-models.sh" >&2; exit 1; }
  chunk_args=()
  [ "$chunks" -gt 0 ] && chunk_args=(--chunks "$chunks")
  read -r e es < <("$exo" --threads "$threads" perplexity "$path" "$text" -c "$ctx" "${chunk_args[@]}" 2>/dev/null | final)
  read -r on ons < <(GGML_CPU_TILED_MM=0 "$ppl_bin" -m "$path" -f "$text" -c "$ctx" -t "$threads" -fa on --no-repack "${chunk_args[@]}" 2>&1 | final)
  read -r off offs < <(GGML_CPU_TILED_MM=0 "$ppl_bin" -m "$path" -f "$text" -c "$ctx" -t "$threads" -fa off --no-repack "${chunk_args[@]}" 2>&1 | final)
  printf '%-42s %5s %8s ±%-8s %8s ±%-8s %8s ±%-8s %8.4f\n' "$m" "$ctx" "$e" "$es" "$on" "$ons" "$off" "$offs" \
    "$(python3 -c "print($e / $on)")"
done
