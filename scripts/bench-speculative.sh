#!/usr/bin/env bash
# Speculative decoding benchmark (not a test): qwen2.5-coder 1.5B as the target, 0.5B as the
# draft (or --lookup), a code-writing chat prompt, plain against speculating greedy generation
# on one node and on a 2-node loopback ring, from one `exo-p2p bench` run (same-run ratios).
#   scripts/bench-speculative.sh [--lookup] [extra bench flags]
set -euo pipefail
cd "$(dirname "$0")/.."
M=${EXO_TEST_MODELS:-$HOME/.cache/exo-p2p/test-models}
TARGET=$M/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
DRAFT=$M/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
BIN=${EXO_BIN:-target/release/exo-p2p}
[ -x "$BIN" ] || cargo build --release -p exo-p2p
SPEC=(--draft "$DRAFT")
if [ "${1:-}" = "--lookup" ]; then SPEC=(--lookup); shift; fi
WORK=$(mktemp -d)
trap 'kill "$PEER" 2>/dev/null || true; rm -rf "$WORK"' EXIT
EXO_HOME=$WORK/b "$BIN" serve --model "$TARGET" --no-mdns --listen /ip4/127.0.0.1/tcp/0 \
  --api-port 0 --api-host 127.0.0.1 2>"$WORK/b.log" &
PEER=$!
for _ in $(seq 1 120); do grep -q "API ready" "$WORK/b.log" && break; sleep 0.5; done
ADDR=$(grep -o '/ip4/127.0.0.1/tcp/[0-9]*/p2p/[A-Za-z0-9]*' "$WORK/b.log" | head -1)
EXO_HOME=$WORK/a "$BIN" bench "$TARGET" --peer "$ADDR" --wait-peers 1 --no-mdns \
  --concurrency 1 --gen-tokens 128 -r 3 "${SPEC[@]}" "$@"
