"""Checks that only make sense against a real node with a real model: greedy output through the
API equals `exo-p2p run --chat` for the same messages, streamed or not. node/tests/real_clients.rs
starts the nodes and passes the expected text; elsewhere these skip, saying why."""

import os

import pytest

EXPECTED = os.environ.get("EXO_EXPECT_CHAT")
pytestmark = pytest.mark.skipif(
    EXPECTED is None, reason="EXO_EXPECT_CHAT is not set (node/tests/real_clients.rs sets it)"
)


def messages():
    return [{"role": "user", "content": os.environ["EXO_CHAT_PROMPT"]}]


def max_tokens():
    return int(os.environ["EXO_CHAT_MAX_TOKENS"])


def test_greedy_chat_equals_run_chat(client, model):
    r = client.chat.completions.create(
        model=model, messages=messages(), temperature=0, max_tokens=max_tokens()
    )
    assert r.choices[0].message.content == EXPECTED
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0


def test_streamed_greedy_chat_equals_run_chat(client, model):
    stream = client.chat.completions.create(
        model=model,
        messages=messages(),
        temperature=0,
        max_tokens=max_tokens(),
        stream=True,
        stream_options={"include_usage": True},
    )
    text, chunks, usage = "", 0, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            chunks += 1
    assert text == EXPECTED
    assert chunks > 2, "the answer was not streamed"
    assert usage is not None and usage.completion_tokens > 0
