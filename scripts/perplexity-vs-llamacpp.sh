#!/usr/bin/env bash
# Perplexity of exo's engine against llama.cpp's llama-perplexity on the same public-domain text
# (KJV Genesis 1-8, tests/fixtures/kjv-genesis-1-8.txt, or FILE), both test models, same chunking
# (CTX tokens per chunk, second half scored). llama.cpp is run with flash attention on (its
# default on CPU) and off: the spread between its own two attention paths shows how much of a
# difference is rounding, not a bug. Usage: scripts/perplexity-vs-llamacpp.sh [FILE]
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
for m in gemma-3-270m-q4_k_m.gguf qwen2.5-coder-0.5b-instruct-q4_k_m.gguf; do
  path="$models_dir/$m"
  [ -f "$path" ] || { echo "missing $path: run scripts/fetch-test-models.sh" >&2; exit 1; }
  chunk_args=()
  [ "$chunks" -gt 0 ] && chunk_args=(--chunks "$chunks")
  read -r e es < <("$exo" --threads "$threads" perplexity "$path" "$text" -c "$ctx" "${chunk_args[@]}" 2>/dev/null | final)
  read -r on ons < <("$ppl_bin" -m "$path" -f "$text" -c "$ctx" -t "$threads" -fa on "${chunk_args[@]}" 2>&1 | final)
  read -r off offs < <("$ppl_bin" -m "$path" -f "$text" -c "$ctx" -t "$threads" -fa off "${chunk_args[@]}" 2>&1 | final)
  printf '%-42s %5s %8s ±%-8s %8s ±%-8s %8s ±%-8s %8.4f\n' "$m" "$ctx" "$e" "$es" "$on" "$ons" "$off" "$offs" \
    "$(python3 -c "print($e / $on)")"
done
