#!/usr/bin/env bash
# Regenerates tests/fixtures/llamacpp-greedy{,-avx2}.jsonl: llama.cpp's greedy continuation (32 tokens,
# flash attention on, no repack, GGML_CPU_TILED_MM=0) of each prompt below on each test model,
# with the token ids, each step's runner-up and top-two logit gap (scripts/llamacpp-greedy.sh).
# engine/tests/reference.rs holds the engine to it. The 1.5B model is included when it is in
# EXO_TEST_MODELS (its cases run in an #[ignore]d test); its run takes the big-model lock.
set -euo pipefail
cd "$(dirname "$0")/.."
models_dir="${EXO_TEST_MODELS:-$HOME/.cache/exo-p2p/test-models}"
# llama.cpp's float code (f16 dot products, expf, softmax sums) differs between AVX-512 and AVX2
# builds, and so do its results: one fixture per path (engine/src/ggml_vec.rs picks the same).
if [ "${VARIANT:-native}" = native ] && grep -qw avx512f /proc/cpuinfo && grep -qw avx512dq /proc/cpuinfo; then
  out=tests/fixtures/llamacpp-greedy.jsonl
else
  out=tests/fixtures/llamacpp-greedy-avx2.jsonl
fi
n=32
prompts=("The quick brown fox" "def fibonacci(n):" "Water boils at" "In 1492, Columbus")
models=(gemma-3-270m-q4_k_m.gguf qwen2.5-coder-0.5b-instruct-q4_k_m.gguf)
big=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
[ -f "$models_dir/$big" ] && models+=("$big") || echo "note: $models_dir/$big is missing; its cases are not regenerated" >&2

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
for m in "${models[@]}"; do
  echo "llama.cpp greedy on $m..." >&2
  run=(scripts/llamacpp-greedy.sh -m "$models_dir/$m" -n "$n" --per-prompt "${prompts[@]}")
  if [ "$m" = "$big" ]; then run=(flock /tmp/exo-big.lock "${run[@]}"); fi
  "${run[@]}" | jq -c --arg model "$m" --argjson n "$n" \
    '{model: $model, prompt, max_tokens: $n, bos, continuation, prompt_ids, ids, second_ids, gaps}' >>"$tmp"
done
if [ ! -f "$models_dir/$big" ] && [ -f "$out" ]; then
  # Keep the 1.5B cases made where the model was present.
  jq -c --arg m "$big" 'select(.model == $m)' "$out" >>"$tmp"
fi
mv "$tmp" "$out"
trap - EXIT
echo "wrote $(wc -l <"$out") cases to $out" >&2
