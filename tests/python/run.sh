#!/usr/bin/env bash
# Runs the Python tests: the official openai client and a real browser (Debian chromium +
# chromium-driver through selenium) against the API.
#
# With EXO_API_BASE set (and EXO_API_KEY if the server has one) they run against that server,
# e.g. a real node. Otherwise this builds and starts the fake server example on a free
# 127.0.0.1 port, with an API key, and stops it afterwards.
#
# Needs python3 with venv; without Chromium the browser test fails unless EXO_SKIP=chromium
# (tests/python/conftest.py). Every step is bounded in time. Screenshots land in
# tests/artifacts/. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv="${EXO_PY_VENV:-$HOME/.cache/exo-p2p/venv-api-tests}"
# Tests run in parallel (cargo test): one of them makes the venv while the others wait for it.
mkdir -p "$(dirname "$venv")"
(
  flock -w 900 9 || { echo "waited 900 s for $venv.lock" >&2; exit 1; }
  [ -x "$venv/bin/pip" ] || timeout 300 python3 -m venv --clear "$venv"
  timeout 600 "$venv/bin/pip" install -q --disable-pip-version-check --timeout 60 \
    -r tests/python/requirements.txt
) 9>"$venv.lock"

if [ -z "${EXO_API_BASE:-}" ]; then
  timeout 1800 cargo build -q -p exo-api --example fake_server
  target_dir="${CARGO_TARGET_DIR:-target}"
  export EXO_API_KEY="${EXO_API_KEY:-python-test-key}"
  out="$(mktemp)"
  "$target_dir/debug/examples/fake_server" --port 0 --api-key "$EXO_API_KEY" >"$out" 2>"$out.log" &
  pid=$!
  trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$out" "$out.log"' EXIT
  for _ in $(seq 100); do
    grep -q '^listening on ' "$out" && break
    kill -0 "$pid" 2>/dev/null || { cat "$out.log" >&2; exit 1; }
    sleep 0.1
  done
  EXO_API_BASE="$(sed -n 's/^listening on //p' "$out")"
  [ -n "$EXO_API_BASE" ] || { echo "the fake server did not start" >&2; cat "$out.log" >&2; exit 1; }
  export EXO_API_BASE
  echo "fake server at $EXO_API_BASE (pid $pid)"
fi

# -rs: print each skip's reason, so nothing passes by silently being skipped.
timeout "${EXO_PYTEST_TIMEOUT:-1200}" \
  "$venv/bin/python" -m pytest tests/python -v -rs -p no:cacheprovider "$@"
