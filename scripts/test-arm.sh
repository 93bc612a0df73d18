#!/usr/bin/env bash
# The aarch64 build, tested on this (x86-64) machine under qemu-user:
#   1. the engine's quantization tests (NEON kernels against the scalar models of ggml's ARM
#      kernels, bit for bit) on three emulated CPUs: cortex-a72 (NEON only), cortex-a76 (+dotprod)
#      and max (+dotprod +i8mm);
#   2. exo-p2p itself cross-built for aarch64-unknown-linux-gnu: `--version` names the kernel
#      set qemu's CPU gets, and a greedy run of both test models prints what the x86 build prints.
# Everything is bounded (timeouts per step); about 5 minutes here once the builds are cached.
#
#   scripts/test-arm.sh            # all of it
#   scripts/test-arm.sh --kernels  # step 1 only
#
# Needs: the Rust target (`rustup target add aarch64-unknown-linux-gnu`), Debian's
# gcc-aarch64-linux-gnu, g++-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user-static
# (.ci/run installs them). Linker, runner and cross compilers are set in .cargo/config.toml.
# Environment: EXO_TEST_MODELS (default ~/.cache/exo-p2p/test-models), ARM_GEN_TOKENS (default 12).
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
kernels_only=false
[[ ${1:-} == --kernels ]] && kernels_only=true

for tool in aarch64-linux-gnu-gcc qemu-aarch64-static; do
  command -v "$tool" >/dev/null || {
    echo "test-arm: $tool missing (apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static)" >&2
    exit 1
  }
done
if ! rustup target list --installed | grep -qx "$target"; then
  rustup target add "$target"
fi

step() { echo "== test-arm: $*" >&2; }

# 1. Kernel tests. The test binary is built once; each CPU reruns it.
for cpu in max cortex-a76 cortex-a72; do
  step "engine quantization tests on qemu -cpu $cpu"
  QEMU_CPU=$cpu timeout 900 cargo test --locked --target "$target" -p exo-engine --lib quant:: \
    -- --test-threads 2
done
$kernels_only && exit 0

# 2. The binary, against the x86 build.
step "building exo-p2p for $target and for this machine"
timeout 1800 cargo build --locked --target "$target" -p exo-p2p
timeout 1800 cargo build --locked -p exo-p2p
arm="target/$target/debug/exo-p2p"
x86="target/debug/exo-p2p"
qemu=(qemu-aarch64-static -L /usr/aarch64-linux-gnu)

for cpu in max:neon+dotprod+i8mm cortex-a76:neon+dotprod cortex-a72:neon; do
  want="kernels: ${cpu#*:}"
  got=$(QEMU_CPU=${cpu%%:*} timeout 60 "${qemu[@]}" "$arm" --version | tail -1)
  [[ $got == "$want" ]] || { echo "test-arm: --version on ${cpu%%:*} says '$got', expected '$want'" >&2; exit 1; }
done
step "--version names the kernel set of each emulated CPU"

models="${EXO_TEST_MODELS:-$HOME/.cache/exo-p2p/test-models}"
scripts/fetch-test-models.sh "$models" >/dev/null
n="${ARM_GEN_TOKENS:-12}"
greedy=(run -n "$n" --temperature 0 --threads 2)
fail=0
for m in gemma-3-270m-q4_k_m.gguf qwen2.5-coder-0.5b-instruct-q4_k_m.gguf; do
  for prompt in "The capital of France is" "def fibonacci(n):"; do
    ref=$(timeout 300 "$x86" "${greedy[@]}" "$models/$m" -p "$prompt" 2>/dev/null)
    for cpu in max cortex-a72; do
      out=$(QEMU_CPU=$cpu timeout 600 "${qemu[@]}" "$arm" "${greedy[@]}" "$models/$m" -p "$prompt" 2>/dev/null)
      if [[ $out == "$ref" ]]; then
        step "$m on $cpu: '$prompt' -> same $n tokens as x86"
      else
        echo "test-arm: $m on $cpu, prompt '$prompt': aarch64 printed" >&2
        printf '  %q\n' "$out" >&2
        echo "  but x86 printed" >&2
        printf '  %q\n' "$ref" >&2
        fail=1
      fi
    done
  done
done
exit $fail
