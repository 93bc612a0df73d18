"""Anthropic's Messages API through the official `anthropic` client: what a Claude-style agent
pointed at this server would do. (This client version has no `temperature` argument; it goes in
`extra_body`, as the API still takes it.)"""

import anthropic
import pytest


def ask(client, model, **kw):
    args = dict(model=model, max_tokens=16, extra_body={"temperature": 0}, messages=[{"role": "user", "content": "Say hi"}])
    args.update(kw)
    return client.messages.create(**args)


def test_anthropic_message_not_streaming(anthropic_client, model, is_fake):
    r = ask(anthropic_client, model, system="Be brief.")
    assert r.type == "message" and r.role == "assistant" and r.model == model
    assert r.content[0].type == "text" and r.content[0].text
    assert r.stop_reason in ("end_turn", "max_tokens")
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    if is_fake:
        assert r.content[0].text == "Hello! You said: Say hi"


def test_anthropic_multi_turn_and_max_tokens(anthropic_client, model, is_fake):
    r = ask(
        anthropic_client,
        model,
        max_tokens=2,
        messages=[
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Nice to meet you, Ada."},
            {"role": "user", "content": [{"type": "text", "text": "Count to ten, slowly, in words."}]},
        ],
    )
    assert r.stop_reason == "max_tokens"
    assert r.usage.output_tokens == 2


def test_anthropic_streaming_events_match_the_message(anthropic_client, model):
    whole = ask(anthropic_client, model)
    with anthropic_client.messages.stream(
        model=model, max_tokens=16, extra_body={"temperature": 0}, messages=[{"role": "user", "content": "Say hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text
    assert final.content[0].text == text
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens

    events = list(
        anthropic_client.messages.create(
            model=model, max_tokens=4, extra_body={"temperature": 0}, stream=True, messages=[{"role": "user", "content": "Say hi"}]
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds[-2] == "message_delta"
    assert "content_block_start" in kinds and "content_block_delta" in kinds and "content_block_stop" in kinds


def test_anthropic_stop_sequences(anthropic_client, model, real_model):
    free = ask(anthropic_client, model, max_tokens=24, messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}])
    text = free.content[0].text
    assert "5" in text, text
    cut = ask(
        anthropic_client,
        model,
        max_tokens=24,
        stop_sequences=["5"],
        messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
    )
    assert cut.content[0].text == text[: text.index("5")]
    assert cut.stop_reason in ("end_turn", "stop_sequence")


def test_anthropic_errors_are_the_clients_exceptions(anthropic_client, model):
    with pytest.raises(anthropic.NotFoundError):
        ask(anthropic_client, "no-such-model")
    with pytest.raises(anthropic.BadRequestError):
        ask(anthropic_client, model, max_tokens=0)
    with pytest.raises(anthropic.BadRequestError):
        ask(anthropic_client, model, messages=[{"role": "robot", "content": "x"}])


def test_anthropic_auth(base_url, api_key, model):
    if not api_key:
        pytest.skip("the server has no API key")
    wrong = anthropic.Anthropic(base_url=base_url, api_key="wrong-key", max_retries=0, timeout=30)
    with pytest.raises(anthropic.AuthenticationError):
        ask(wrong, model)
    bearer = anthropic.Anthropic(base_url=base_url, auth_token=api_key, max_retries=0, timeout=60)
    assert ask(bearer, model).content[0].text
