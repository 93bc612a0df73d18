#!/usr/bin/env bash
# Several streams at once on one node: `exo-p2p bench MODEL --concurrency LIST` against
# llama-server --parallel N on the same file, in one run, with the same statistic on both sides:
# N streams started together, each a PP-token prompt then TG generated tokens (no stop on EOS);
# aggregate = N * TG / wall time from the first start to the last end; per-stream = (TG - 1) /
# time after its first token, averaged; TTFT p50/p99 over the streams (nearest rank).
# llama-server is driven over HTTP by a small Python client (prompt as token ids, cache_prompt
# off, temperature 0), exo in-process through its drivers.
#
# Usage: scripts/bench-concurrency.sh [MODEL.gguf]   (default: qwen2.5-coder-0.5b, the test model)
# Environment: CONCURRENCY (1,4,8), PP (64), TG (64), THREADS (2), EXO_BIN, EXO_TEST_MODELS.
# Figures on a shared machine are indicative only: run it under `flock /tmp/exo-heavy.lock`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/llamacpp.sh
. "$root/scripts/llamacpp.sh"
models_dir=${EXO_TEST_MODELS:-$HOME/.cache/exo-p2p/test-models}
model=${1:-$models_dir/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf}
conc=${CONCURRENCY:-1,4,8}
pp=${PP:-64}
tg=${TG:-64}
threads=${THREADS:-2}
py=$(command -v python3)

server=$(llamacpp_bin native llama-server)
echo "llama.cpp: commit 0c1e570 (llama-cpp-python $LLAMACPP_VER sdist), $("$server" --version 2>&1 | tr '\n' ' ')"
echo "model: $model; prompt $pp tokens, $tg generated per stream; $threads threads"

# EXO_BIN: an exo-p2p binary to use instead of building the release one (the dev profile builds
# the engine and its dependencies optimised too).
exo=${EXO_BIN:-$root/target/release/exo-p2p}
[ -n "${EXO_BIN:-}" ] || (cd "$root" && nice -n 5 cargo build -q --release -p exo-p2p >&2)
echo
echo "## exo-p2p bench --concurrency $conc"
EXO_THREADS=$threads "$exo" bench "$model" --prompt-tokens "$pp" \
  --gen-tokens "$tg" -r 1 --concurrency "$conc"

echo
echo "## llama-server --parallel N"
echo "| streams | aggregate t/s | per-stream t/s | TTFT p50 ms | TTFT p99 ms | vs 1 stream |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: |"
port=$((20000 + RANDOM % 20000))
base=""
for n in ${conc//,/ }; do
  "$server" -m "$model" --host 127.0.0.1 --port "$port" -t "$threads" --parallel "$n" \
    -c $((n * (pp + tg + 64))) -fa on --no-webui >/tmp/bench-llama-server.$$.log 2>&1 &
  pid=$!
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.5
  done
  line=$("$py" - "$port" "$n" "$pp" "$tg" "$base" <<'EOF'
import http.client, json, sys, threading, time
port, n, pp, tg, base = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
def post(path, body, stream=False):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    return c.getresponse()
text = "The quick brown fox jumps over the lazy dog. " * pp
tokens = json.loads(post("/tokenize", {"content": text, "add_special": True}).read())["tokens"][:pp]
def run(out, i, start):
    r = post("/completion", {"prompt": tokens, "n_predict": tg, "stream": True, "ignore_eos": True,
                             "cache_prompt": False, "temperature": 0})
    first = last = None
    got = 0
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        ev = json.loads(line[6:])
        if ev.get("content") is not None and not ev.get("stop"):
            now = time.perf_counter()
            first = first or now
            last = now
            got += 1
        if ev.get("stop"):
            break
    out[i] = (first - start, (tg - 1) / (last - first) if last > first else 0.0, got)
# One warm-up stream.
run([None], 0, time.perf_counter())
out = [None] * n
start = time.perf_counter()
ts = [threading.Thread(target=run, args=(out, i, start)) for i in range(n)]
[t.start() for t in ts]
[t.join() for t in ts]
wall = time.perf_counter() - start
ttft = sorted(o[0] for o in out)
pct = lambda p: ttft[max(1, min(len(ttft), -(-len(ttft) * p // 100))) - 1]
agg = n * tg / wall
per = sum(o[1] for o in out) / n
vs = agg / float(base) if base else 1.0
print(f"| {n} | {agg:.2f} | {per:.2f} | {pct(50)*1000:.0f} | {pct(99)*1000:.0f} | {vs:.2f}x |")
EOF
)
  echo "$line"
  [ -n "$base" ] || base=$(echo "$line" | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
echo
echo "(a shared 2-core machine: indicative figures only)"
