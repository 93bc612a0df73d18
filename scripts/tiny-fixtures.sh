#!/usr/bin/env bash
# Regenerates the tiny random-weight GGUFs of the architectures and quant types exo-p2p learnt
# for issues 14 and 21, and llama.cpp's greedy reference on each:
#
#   scripts/tiny-fixtures.sh [ARCH:TYPE...]   (default: every file below)
#
#   tests/fixtures/tiny-<arch>-<type>.gguf    scripts/tiny-gguf.py, then llama-quantize (--pure,
#                                             except MXFP4_MOE: MXFP4 experts, Q8_0 elsewhere)
#   tests/fixtures/tiny-greedy.jsonl          scripts/llamacpp-greedy.sh --per-prompt on each
#   tests/fixtures/tiny-perplexity.jsonl      llama-perplexity on KJV Genesis 1-8 (ctx 128, 8 chunks)
#
# Given ARCH:TYPE pairs, only those files are made again and their lines of the two jsonl files
# replaced. engine/tests/tiny_arch.rs holds the engine to them. Everything is deterministic: the generator
# is seeded and llama-quantize has no randomness, so a rerun rewrites the same GGUF bytes (the
# fixture's logits depend on llama.cpp's build only).
#
# Needs the test model qwen2.5-coder-0.5b (for its tokenizer; scripts/fetch-test-models.sh) and
# builds llama-quantize and llama-simple with scripts/llamacpp.sh when absent.
set -euo pipefail
cd "$(dirname "$0")/.."
here=scripts
# shellcheck source=llamacpp.sh
. "$here/llamacpp.sh"

models_dir="${EXO_TEST_MODELS:-$HOME/.cache/exo-p2p/test-models}"
tok="$models_dir/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
[ -f "$tok" ] || { echo "missing $tok: run scripts/fetch-test-models.sh" >&2; exit 1; }
venv="$HOME/.cache/exo-p2p/gguf-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import gguf, numpy' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'gguf==0.19.0' numpy
fi
quantize=$(flock /tmp/exo-llamacpp.lock bash -c ". $here/llamacpp.sh; llamacpp_bin native llama-quantize")
ppl_bin=$(flock /tmp/exo-llamacpp.lock bash -c ". $here/llamacpp.sh; llamacpp_bin native llama-perplexity")

out=tests/fixtures
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# (arch, type) pairs: every architecture in Q8_0; the new quant types on dense qwen3; gpt-oss
# as published (MXFP4 experts).
files=(qwen3:Q8_0 qwen3moe:Q8_0 mixtral:Q8_0 qwen3:Q2_K qwen3:Q3_K_S qwen3:IQ4_NL qwen3:IQ4_XS
  gpt-oss:MXFP4_MOE)
[ $# -eq 0 ] || files=("$@")
models=()
for f in "${files[@]}"; do
  arch=${f%%:*} ty=${f#*:}
  src="$tmp/$arch-f32.gguf"
  [ -f "$src" ] || "$venv/bin/python" "$here/tiny-gguf.py" "$arch" "$src" --tokenizer "$tok"
  short=${ty%_S}
  name=$(echo "tiny-$arch-${short%_MOE}" | tr 'A-Z' 'a-z')
  pure=(--pure)
  [ "$ty" != MXFP4_MOE ] || pure=()
  "$quantize" "${pure[@]}" "$src" "$out/$name.gguf" "$ty" >"$tmp/quantize.log" 2>&1 ||
    { cat "$tmp/quantize.log" >&2; exit 1; }
  echo "wrote $out/$name.gguf ($(stat -c %s "$out/$name.gguf") bytes)" >&2
  models+=("$out/$name.gguf")
done

# `keep FILE`: the lines of FILE for the models not made again in this run.
keep() {
  local names
  names=$(printf '%s\n' "${models[@]}" | xargs -n1 basename | jq -R . | jq -sc .)
  [ $# -eq 0 ] || [ ! -f "$1" ] || jq -c --argjson names "$names" \
    'select(.model as $m | $names | index($m) | not)' "$1"
}

prompts=("The quick brown fox" "def fibonacci(n):" "Water boils at" "In 1492, Columbus")
n=24
fixture="$tmp/tiny-greedy.jsonl"
keep "$out/tiny-greedy.jsonl" >"$fixture"
for g in "${models[@]}"; do
  m=$(basename "$g")
  "$here/llamacpp-greedy.sh" -m "$g" -n "$n" --ignore-eos --per-prompt "${prompts[@]}" |
    jq -c --arg model "$m" --argjson n "$n" \
      '{model: $model, prompt, max_tokens: $n, bos, continuation, prompt_ids, ids, second_ids, gaps}' >>"$fixture"
done
mv "$fixture" "$out/tiny-greedy.jsonl"
echo "wrote $(wc -l <"$out/tiny-greedy.jsonl") cases to $out/tiny-greedy.jsonl" >&2

# Perplexity with the greedy reference's numerics (flash attention on, no repack, no tiled matmul).
text=tests/fixtures/kjv-genesis-1-8.txt
ctx=128 chunks=8
ppl="$tmp/tiny-perplexity.jsonl"
keep "$out/tiny-perplexity.jsonl" >"$ppl"
for g in "${models[@]}"; do
  m=$(basename "$g")
  # llama.cpp's logger thread sometimes loses the last lines at exit: run again when it does.
  v=
  for _ in 1 2 3 4 5; do
    GGML_CPU_TILED_MM=0 "$ppl_bin" -m "$g" -f "$text" -c "$ctx" --chunks "$chunks" -fa on --no-repack -t 2 \
      >"$tmp/ppl.log" 2>&1
    v=$(sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p' "$tmp/ppl.log")
    [ -z "$v" ] || break
  done
  [ -n "$v" ] || { tail -20 "$tmp/ppl.log" >&2; echo "llama-perplexity gave no estimate for $m" >&2; exit 1; }
  jq -nc --arg model "$m" --argjson ctx "$ctx" --argjson chunks "$chunks" --argjson ppl "$v" \
    '{model: $model, text: "kjv-genesis-1-8.txt", ctx: $ctx, chunks: $chunks, ppl: $ppl}' >>"$ppl"
done
mv "$ppl" "$out/tiny-perplexity.jsonl"
echo "wrote $out/tiny-perplexity.jsonl" >&2
