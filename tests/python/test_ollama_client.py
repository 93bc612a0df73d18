"""Ollama's API through the official `ollama` client: what Open WebUI or an Ollama script
pointed at this server would do."""

import json
import urllib.request

import ollama
import pytest

PROMPT = [{"role": "user", "content": "Say hi"}]
GREEDY = {"temperature": 0, "num_predict": 16}


def test_ollama_list_show_ps_version(ollama_client, model, base_url, api_key):
    names = [m.model for m in ollama_client.list().models]
    assert model in names
    shown = ollama_client.show(model)
    assert "completion" in (shown.capabilities or [])
    assert any(m.model == model for m in ollama_client.ps().models)
    req = urllib.request.Request(base_url + "/api/version")
    if api_key:
        req.add_header("Authorization", "Bearer " + api_key)
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert json.load(resp)["version"]


def test_ollama_chat_not_streaming(ollama_client, model, is_fake):
    r = ollama_client.chat(model=model, messages=PROMPT, options=GREEDY)
    assert r.done and r.done_reason in ("stop", "length")
    assert r.message.role == "assistant" and r.message.content
    assert r.eval_count > 0 and r.prompt_eval_count > 0 and r.total_duration > 0
    if is_fake:
        assert r.message.content == "Hello! You said: Say hi"


def test_ollama_chat_streaming_equals_not_streaming(ollama_client, model):
    whole = ollama_client.chat(model=model, messages=PROMPT, options=GREEDY)
    parts = list(ollama_client.chat(model=model, messages=PROMPT, options=GREEDY, stream=True))
    assert len(parts) > 1
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert parts[-1].eval_count == whole.eval_count


def test_ollama_generate_streamed_and_not(ollama_client, model):
    whole = ollama_client.generate(model=model, prompt="Say hi", options=GREEDY)
    assert whole.done and whole.response
    parts = list(ollama_client.generate(model=model, prompt="Say hi", options=GREEDY, stream=True))
    assert parts[-1].done
    assert "".join(p.response for p in parts) == whole.response


def test_ollama_options_num_predict_and_stop(ollama_client, model, is_fake):
    r = ollama_client.chat(
        model=model,
        messages=[{"role": "user", "content": "Count from 1 to 20, separated by commas."}],
        options={"temperature": 0, "num_predict": 3, "seed": 1, "top_p": 0.9},
    )
    assert r.done_reason == "length" and r.eval_count == 3
    if not is_fake:
        free = ollama_client.chat(
            model=model,
            messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
            options={"temperature": 0, "num_predict": 24},
        ).message.content
        assert "5" in free, free
        cut = ollama_client.chat(
            model=model,
            messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
            options={"temperature": 0, "num_predict": 24, "stop": ["5"]},
        )
        assert cut.message.content == free[: free.index("5")]
        assert cut.done_reason == "stop"


def test_ollama_errors_are_response_errors(ollama_client, model):
    with pytest.raises(ollama.ResponseError) as e:
        ollama_client.chat(model="no-such-model", messages=PROMPT)
    assert e.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as e:
        ollama_client.chat(model=model, messages=PROMPT, options={"temperature": 50})
    assert e.value.status_code == 400


def test_ollama_auth(base_url, api_key, model):
    if not api_key:
        pytest.skip("the server has no API key")
    wrong = ollama.Client(host=base_url, headers={"Authorization": "Bearer wrong"}, timeout=30)
    with pytest.raises(ollama.ResponseError) as e:
        wrong.chat(model=model, messages=PROMPT)
    assert e.value.status_code == 401
