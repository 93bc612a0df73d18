"""The API through the official OpenAI Python client: what any OpenAI app would do."""

import openai
import pytest


def test_models_list(client, model):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert model in ids
    for m in models.data:
        assert m.object == "model"
        assert isinstance(m.created, int)
        assert m.owned_by
    assert client.models.retrieve(model).id == model


def test_chat_not_streaming(client, model, is_fake):
    resp = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}],
        max_tokens=16,
        temperature=0,
    )
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    choice = resp.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    if is_fake:
        assert choice.message.content == "Hello! You said: Say hi"
        assert choice.finish_reason == "stop"


def test_chat_content_parts(client, model, is_fake):
    resp = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Say"}, {"type": "text", "text": "hi"}]}],
        max_tokens=16,
    )
    assert resp.choices[0].message.content
    if is_fake:
        assert resp.choices[0].message.content == "Hello! You said: Say\nhi"


def test_chat_streaming(client, model, is_fake):
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hi"}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks, "no chunks"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    usage = chunks[-1]
    assert usage.choices == []
    assert usage.usage.completion_tokens > 0
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text
    if is_fake:
        assert text == "Hello! You said: Say hi"
        assert usage.usage.completion_tokens == 5


def test_chat_logprobs(client, model):
    resp = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hi"}],
        max_tokens=4,
        logprobs=True,
        top_logprobs=2,
    )
    content = resp.choices[0].logprobs.content
    assert content
    for tok in content:
        assert isinstance(tok.token, str)
        assert tok.logprob <= 0
        assert tok.bytes == list(tok.token.encode())
        assert len(tok.top_logprobs) == 2


def test_completions(client, model, is_fake):
    resp = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8)
    assert resp.object == "text_completion"
    assert resp.choices[0].text
    assert resp.usage.completion_tokens > 0
    if is_fake:
        assert resp.choices[0].text == "Hello! You said: Once upon a time"
    chunks = list(client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, stream=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    if is_fake:
        assert text == resp.choices[0].text


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model-xyz", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 404
    assert err.value.code == "model_not_found"
    assert "no-such-model-xyz" in err.value.message


def test_bad_request(client, model):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], n=2)
    assert err.value.param == "n"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], temperature=5)
    assert err.value.param == "temperature"


def test_wrong_key_is_refused(base_url, api_key, model):
    if not api_key:
        pytest.skip("the server has no API key (set EXO_API_KEY to the key it was started with)")
    for key in ("wrong-key", ""):
        bad = openai.OpenAI(base_url=base_url + "/v1", api_key=key or "x", max_retries=0)
        if not key:
            bad = bad.with_options(default_headers={"Authorization": ""})
        with pytest.raises(openai.AuthenticationError) as err:
            bad.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert err.value.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
