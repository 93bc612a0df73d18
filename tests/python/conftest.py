"""Shared fixtures: the server under test comes from the environment, so the same tests run
against the fake server (tests/python/run.sh starts one) or a real node later.

EXO_API_BASE   the server's root URL, e.g. http://127.0.0.1:52415 (a trailing /v1 is fine)
EXO_API_KEY    the server's API key, if it has one
EXO_TEST_MODEL the model to use (default: the first one /v1/models lists)

A test that needs something the machine lacks (Chromium) calls require_capability: the same rules
as tests/capability.rs for the Rust tests.
"""

import json
import os
import sys
import urllib.request

import pytest

FAKE_MODEL = "fake-model"


def require_capability(name, test, why):
    """`test` cannot run because `why`: it fails, unless the user opted out of capability `name`
    with EXO_SKIP (comma-separated, or `all`); then it is skipped, loudly, and listed in
    $EXO_SKIPPED_LOG. EXO_REQUIRE_<NAME>=1 (CI) makes it a failure even when opted out."""
    if os.environ.get(f"EXO_REQUIRE_{name.upper()}") == "1":
        pytest.fail(f"{test} needs {name}: {why} (EXO_REQUIRE_{name.upper()}=1)", pytrace=False)
    opted_out = {s.strip().lower() for s in os.environ.get("EXO_SKIP", "").split(",")}
    if name not in opted_out and "all" not in opted_out:
        pytest.fail(
            f"{test} needs {name}: {why}. Install it, or opt out with EXO_SKIP={name} "
            '(README, "Tests")',
            pytrace=False,
        )
    line = f"SKIPPED {test}: {why} (EXO_SKIP={name})"
    sys.stderr.write(f"\n*** {line} ***\n")
    log = os.environ.get("EXO_SKIPPED_LOG")
    if log:
        with open(log, "a") as f:
            f.write(line + "\n")
    pytest.skip(line)


def _base():
    base = os.environ.get("EXO_API_BASE", "").strip().rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return base


@pytest.fixture(scope="session")
def base_url():
    base = _base()
    if not base:
        pytest.skip("EXO_API_BASE is not set: run tests/python/run.sh, or point it at a node")
    return base


@pytest.fixture(scope="session")
def api_key():
    return os.environ.get("EXO_API_KEY") or None


def get_json(base_url, path, api_key=None):
    req = urllib.request.Request(base_url + path)
    if api_key:
        req.add_header("Authorization", "Bearer " + api_key)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def get_text(base_url, path, api_key=None):
    req = urllib.request.Request(base_url + path)
    if api_key:
        req.add_header("Authorization", "Bearer " + api_key)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read().decode()


@pytest.fixture(scope="session")
def model(base_url, api_key):
    wanted = os.environ.get("EXO_TEST_MODEL")
    if wanted:
        return wanted
    models = get_json(base_url, "/v1/models", api_key)["data"]
    if not models:
        pytest.skip("the server lists no models")
    ids = [m["id"] for m in models]
    return FAKE_MODEL if FAKE_MODEL in ids else ids[0]


@pytest.fixture(scope="session")
def is_fake(model):
    """The fake backend answers deterministically, so exact text can be checked."""
    return model == FAKE_MODEL


@pytest.fixture(scope="session")
def client(base_url, api_key):
    import openai  # pinned in requirements.txt: missing is a failure, not a skip
    return openai.OpenAI(base_url=base_url + "/v1", api_key=api_key or "no-key", max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def anthropic_client(base_url, api_key):
    anthropic = pytest.importorskip("anthropic")
    return anthropic.Anthropic(base_url=base_url, api_key=api_key or "no-key", max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def ollama_client(base_url, api_key):
    ollama = pytest.importorskip("ollama")
    headers = {"Authorization": "Bearer " + api_key} if api_key else {}
    return ollama.Client(host=base_url, headers=headers, timeout=60)


@pytest.fixture(scope="session")
def real_model(is_fake):
    """Tool calls and structured output need a model: the fake server cannot follow them."""
    if is_fake:
        pytest.skip("needs a real model (the fake backend ignores tools and grammars)")
