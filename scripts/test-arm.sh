#!/usr/bin/env bash
# The aarch64 build, tested on this (x86-64) machine under qemu-user:
#   1. the engine's library tests for quantization (NEON kernels against the scalar models of
#      ggml's ARM kernels, bit for bit, at every level the CPU has) and for ggml's float vector
#      code (NEON expf, softmax sums, SwiGLU, f16 dot, tiled attention: against their scalar
#      models) on three emulated CPUs: cortex-a72 (NEON only), cortex-a76 (+dotprod) and max
#      (+dotprod +i8mm);
#   2. greedy decoding of both test models with the engine's `greedy` example cross-built for
#      aarch64, at each kernel level (EXO_QUANT_ISA=neon, dotprod, i8mm on qemu's max CPU, and
#      a real NEON-only CPU, cortex-a72): the token ids must equal the x86 build's (with
#      --quick, what CI runs: one prompt per model, at i8mm, dotprod and on cortex-a72);
#   3. with --full: exo-p2p itself cross-built for aarch64-unknown-linux-gnu (the whole
#      workspace: much longer, so not in CI): `--version` names the kernel set of each emulated
#      CPU, and `exo-p2p run` greedy prints what the x86 build prints.
# Exits non-zero on any mismatch. Every step has a timeout.
#
#   scripts/test-arm.sh            # steps 1 and 2
#   scripts/test-arm.sh --quick    # step 1 and part of 2 (what CI runs: a few minutes of qemu)
#   scripts/test-arm.sh --kernels  # step 1 only
#   scripts/test-arm.sh --full     # steps 1, 2 and 3
#
# Needs: the Rust target (`rustup target add aarch64-unknown-linux-gnu`), Debian's
# gcc-aarch64-linux-gnu, g++-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user-static
# (.ci/run installs them). Linker, runner and cross compilers are set in .cargo/config.toml.
# Environment: EXO_TEST_MODELS (default ~/.cache/exo-p2p/test-models), ARM_GEN_TOKENS (default 8),
# ARM_EXO_P2P (step 3's aarch64 exo-p2p, e.g. the one scripts/build-release.sh --arch aarch64
# made; default: cross-built here with the dev profile).
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
mode=${1:-}
case $mode in "" | --quick | --kernels | --full) ;; *) echo "usage: $0 [--quick|--kernels|--full]" >&2; exit 2 ;; esac

for tool in aarch64-linux-gnu-gcc qemu-aarch64-static; do
  command -v "$tool" >/dev/null || {
    echo "test-arm: $tool missing (apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static)" >&2
    exit 1
  }
done
if ! rustup target list --installed | grep -qx "$target"; then
  rustup target add "$target"
fi

step() { echo "== test-arm: $* ($SECONDS s)" >&2; }
qemu=(qemu-aarch64-static -L /usr/aarch64-linux-gnu)

# 1. Kernel tests: the test binary is built once; each CPU reruns it.
step "building exo-engine's tests for $target"
# built CARGO-ARGS...: cargo's build, printing the path of the executable it made (wherever
# CARGO_TARGET_DIR puts it).
built() {
  local exe
  exe=$(timeout 3600 cargo "$@" --locked --message-format=json |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
  [[ -x $exe ]] || { echo "test-arm: cargo $* built no executable" >&2; exit 1; }
  echo "$exe"
}
bin=$(built test --target "$target" -p exo-engine --lib --no-run)
for cpu in max cortex-a76 cortex-a72; do
  step "engine quantization and float vector tests on qemu -cpu $cpu"
  QEMU_CPU=$cpu timeout 600 "${qemu[@]}" "$bin" --test-threads 2 \
    quant:: ggml_vec:: attention:: attention_tiled:: ops:: layers::moe::
done
[[ $mode == --kernels ]] && exit 0

models="${EXO_TEST_MODELS:-$HOME/.cache/exo-p2p/test-models}"
scripts/fetch-test-models.sh "$models" >/dev/null
n="${ARM_GEN_TOKENS:-8}"
prompts=("The capital of France is" "def fibonacci(n):")
runs=(max:i8mm max:dotprod max:neon cortex-a72:)
if [[ $mode == --quick ]]; then
  # qwen's prompt is the one whose dotprod/i8mm text once left x86's (a near tie at step 2).
  runs=(max:i8mm max:dotprod cortex-a72:)
fi
fail=0
# compare WHAT GOT WANT
compare() {
  if [[ $2 == "$3" ]]; then
    step "$1: the same $n tokens as x86"
  else
    echo "test-arm: $1: aarch64 printed" >&2
    printf '  %q\n' "$2" >&2
    echo "  but x86 printed" >&2
    printf '  %q\n' "$3" >&2
    fail=1
  fi
}

# 2. Greedy decoding with the engine alone.
step "building the greedy example for $target and for this machine"
arm_greedy=$(built build --target "$target" -p exo-engine --example greedy)
x86_greedy=$(built build -p exo-engine --example greedy)
for m in gemma-3-270m-q4_k_m.gguf qwen2.5-coder-0.5b-instruct-q4_k_m.gguf; do
  for prompt in "${prompts[@]}"; do
    if [[ $mode == --quick ]]; then
      [[ $m == qwen* && $prompt == The* || $m == gemma* && $prompt == def* ]] || continue
    fi
    ref=$(timeout 300 "$x86_greedy" "$models/$m" "$prompt" "$n")
    for run in "${runs[@]}"; do
      cpu=${run%%:*} isa=${run#*:}
      out=$(QEMU_CPU=$cpu EXO_QUANT_ISA=$isa timeout 600 "${qemu[@]}" "$arm_greedy" \
        "$models/$m" "$prompt" "$n")
      compare "$m, '$prompt', qemu -cpu $cpu${isa:+ EXO_QUANT_ISA=$isa}" "$out" "$ref"
    done
  done
done
[[ $mode == --full ]] || exit $fail

# 3. The binary, against the x86 build.
if [[ -n ${ARM_EXO_P2P:-} ]]; then
  arm=$ARM_EXO_P2P
  [[ -x $arm ]] || { echo "test-arm: ARM_EXO_P2P=$arm is not an executable" >&2; exit 1; }
  step "exo-p2p for $target: $arm; building it for this machine"
else
  step "building exo-p2p for $target and for this machine"
  arm=$(built build --target "$target" -p exo-p2p --bin exo-p2p)
fi
x86=$(built build -p exo-p2p --bin exo-p2p)
for cpu in max:neon+dotprod+i8mm cortex-a76:neon+dotprod cortex-a72:neon; do
  want="kernels: ${cpu#*:}"
  got=$(QEMU_CPU=${cpu%%:*} timeout 60 "${qemu[@]}" "$arm" --version | grep '^kernels:')
  [[ $got == "$want" ]] || { echo "test-arm: --version on ${cpu%%:*} says '$got', expected '$want'" >&2; exit 1; }
done
step "--version names the kernel set of each emulated CPU"
greedy=(run --max-tokens "$n" --temperature 0 --threads 2)
for m in gemma-3-270m-q4_k_m.gguf qwen2.5-coder-0.5b-instruct-q4_k_m.gguf; do
  for prompt in "${prompts[@]}"; do
    ref=$(timeout 300 "$x86" "${greedy[@]}" "$models/$m" -p "$prompt" 2>/dev/null)
    for cpu in max cortex-a72; do
      out=$(QEMU_CPU=$cpu timeout 600 "${qemu[@]}" "$arm" "${greedy[@]}" "$models/$m" -p "$prompt" 2>/dev/null)
      compare "exo-p2p run $m, '$prompt', qemu -cpu $cpu" "$out" "$ref"
    done
  done
done
exit $fail
