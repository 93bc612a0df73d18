#!/usr/bin/env bash
# Prompt processing (pp128) and generation (tg64) speed of exo's engine against llama.cpp's
# llama-bench (commit 0c1e570, default settings: its repacked kernels on), on the test models and
# the 1.5B one when present, in one run. Usage: scripts/bench-vs-llamacpp.sh
#
# llama-bench is built by scripts/llamacpp.sh twice: natively (-DGGML_NATIVE=ON, AVX-512 on this
# CPU) and without AVX-512 (on a CPU without AVX-512 the native build is that build, and the
# second is skipped). exo's figures come from `engine/examples/bench.rs`, once with the best
# kernels the CPU has and once with EXO_NO_AVX512=1 (256-bit kernels only); each exo column is
# compared with the llama.cpp build of the same instruction sets.
#
# Every figure is the best of ROUNDS rounds of REPS repetitions, the same statistic on both
# sides (llama-bench's fastest sample, exo's fastest repetition), with the contenders
# interleaved, so that a burst of other work on the machine does not decide a ratio. The machine
# should be quiet: run it under `flock /tmp/exo-bench.lock` where several jobs share it.
#
# Environment: THREADS (default 2), REPS (3), ROUNDS (2), PP (128), TG (64), EXO_TEST_MODELS.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/llamacpp.sh
. "$root/scripts/llamacpp.sh"
threads=${THREADS:-2}
reps=${REPS:-3}
rounds=${ROUNDS:-2}
pp=${PP:-128}
tg=${TG:-64}
models_dir=${EXO_TEST_MODELS:-$HOME/.cache/exo-p2p/test-models}
py=$(command -v python3 || command -v python)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

bench_native=$(llamacpp_bin native llama-bench)
if grep -qw avx512f /proc/cpuinfo; then
  bench_avx2=$(llamacpp_bin avx2 llama-bench)
else
  bench_avx2=$bench_native
fi
echo "llama.cpp: commit 0c1e570 (llama-cpp-python $LLAMACPP_VER sdist), $("$bench_native" --version 2>&1 | grep -m1 'built with')" >&2
models=(gemma-3-270m-q4_k_m.gguf qwen2.5-coder-0.5b-instruct-q4_k_m.gguf)
big=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
[ -f "$models_dir/$big" ] && models+=("$big") || echo "note: $big is missing (fetch-test-models.sh --large)" >&2

echo "building exo's bench example..." >&2
(cd "$root" && nice -n 5 cargo build -q --release -p exo-engine --example bench >&2)
exo_bin="$root/target/release/examples/bench"

out=$work/results.jsonl
for round in $(seq 1 "$rounds"); do
for m in "${models[@]}"; do
  path="$models_dir/$m"
  [ -f "$path" ] || { echo "missing $path: run scripts/fetch-test-models.sh" >&2; exit 1; }
  echo "round $round: measuring $m..." >&2
  for variant in native avx2; do
    if [ "$variant" = native ]; then bin=$bench_native; who=llama.cpp; else bin=$bench_avx2; who="llama.cpp no-avx512"; fi
    "$bin" -m "$path" -p "$pp" -n "$tg" -t "$threads" -r "$reps" -o json 2>/dev/null \
      | "$py" -c '
import json, sys
for r in json.load(sys.stdin):
    t = "pp" if r["n_prompt"] > 0 else "tg"
    print(json.dumps({"who": sys.argv[2], "model": sys.argv[1], "test": t, "tok_s": max(r["samples_ts"])}))
' "$m" "$who" >> "$out"
  done
  for mode in avx512 no-avx512; do
    if [ "$mode" = no-avx512 ]; then export EXO_NO_AVX512=1; else unset EXO_NO_AVX512; fi
    RAYON_NUM_THREADS=$threads "$exo_bin" "$path" --pp "$pp" --tg "$tg" --reps "$reps" \
      --threads "$threads" | "$py" -c '
import json, sys
r = json.loads(sys.stdin.read())
for t in ("pp", "tg"):
    print(json.dumps({"who": "exo " + sys.argv[2], "model": sys.argv[1], "test": t, "tok_s": r[t + "_tok_s"]}))
' "$m" "$mode" >> "$out"
  done
  unset EXO_NO_AVX512
done
done

"$py" - "$out" "$pp" "$tg" "$threads" "$rounds" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
pp, tg, threads = sys.argv[2], sys.argv[3], sys.argv[4]
get = lambda who, m, t: max(r["tok_s"] for r in rows if r["who"] == who and r["model"] == m and r["test"] == t)
models = sorted({r["model"] for r in rows})
print(f"tokens/s, {threads} threads, best of {sys.argv[5]} rounds; ratio = exo / llama.cpp")
print("ratios: exo / native llama.cpp; last column: exo no-avx512 / llama.cpp built without AVX-512")
print(f"{'model':42} {'test':6} {'llama.cpp':>10} {'exo':>9} {'ratio':>6} {'exo no-avx512':>14} {'ratio':>6} {'llama.cpp no-avx512':>20} {'ratio':>6}")
for m in models:
    for t, n in (("pp", pp), ("tg", tg)):
        l = get("llama.cpp", m, t)
        a = get("exo avx512", m, t)
        b = get("exo no-avx512", m, t)
        l2 = get("llama.cpp no-avx512", m, t)
        print(f"{m:42} {t + n:6} {l:10.1f} {a:9.1f} {a / l:6.2f} {b:14.1f} {b / l:6.2f} {l2:20.1f} {b / l2:6.2f}")
EOF
