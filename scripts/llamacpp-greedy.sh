#!/usr/bin/env bash
# llama.cpp's greedy continuation of prompts with the top-two logits of every step, as JSON lines:
# the reference the engine's greedy output is compared with.
#
#   scripts/llamacpp-greedy.sh -m MODEL.gguf [options] PROMPT...
#
#   PROMPT       a prompt as text, tokenized as llama-simple does (BOS added when the model's
#                vocabulary asks for it, special tokens like <|im_start|> parsed); several prompts
#                run one after another on the same loaded model, each in a fresh context
#   -            read prompts from stdin, one JSON string a line (for prompts with newlines:
#                `printf '%s' "$p" | jq -Rs . | scripts/llamacpp-greedy.sh -m M -`)
#   --ids 1,2,3  a prompt given as token ids (no BOS added)
#   -n N         tokens to generate per prompt (default 32)
#   -t N         threads (default: all cores; llama.cpp's results do not depend on it)
#   --fa on|off  flash attention (default on)
#   --repack     let llama.cpp repack weights (default off, as `--no-repack`)
#   --tiled      allow llama.cpp's tiled K-quant matmul (default off, GGML_CPU_TILED_MM=0)
#   --ignore-eos keep generating past an end-of-generation token (default: stop after it)
#   --per-prompt one line per prompt instead of one per step (below)
#   -v           llama.cpp's own log on stderr (default: warnings and errors only)
#
# Output, one line per generated token (prompt = index of the prompt, step = 0 for the token
# after the prompt; text = the token's piece, invalid UTF-8 bytes as U+FFFD; gap = logit -
# second_logit, the margin greedy had at that step):
#   {"prompt":0,"step":0,"id":35935,"text":" jumps","logit":20.13,"second_id":...,"second_text":...,
#    "second_logit":17.2,"gap":2.93,"eog":false}
# With --per-prompt, one line per prompt (bos = a BOS token was added; second_ids = the runner-up
# of each step; continuation = the pieces concatenated, without the end-of-generation token; ids,
# second_ids and gaps include it; prompt is null for --ids):
#   {"prompt":"The quick brown fox","bos":true,"prompt_ids":[2,...],"ids":[...],"second_ids":[...],
#    "gaps":[...],"continuation":"..."}
#
# The defaults are the reference numerics for greedy comparisons (flash attention on, no repack,
# no tiled matmul). The tool is compiled once with g++ against the llama.cpp that
# scripts/llamacpp.sh builds (llama-cpp-python 0.3.36's vendored llama.cpp, commit 0c1e570;
# VARIANT=avx2 picks its AVX-512-off build) and cached beside that build.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=llamacpp.sh
. "$here/llamacpp.sh"

tool=$(llamacpp_tool "${VARIANT:-native}" llamacpp-greedy)
exec "$tool" "$@"
