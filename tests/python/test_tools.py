"""Tool calls and structured output through the official `openai` client against a real model:
a forced call's arguments parse and carry the required fields, a tool result goes back and is
used, a json_schema answer validates. The grammar on the sampling node is what makes the small
test model comply; without it these fail."""

import json

import jsonschema
import openai
import pytest

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a timezone",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]},
    },
}
ASK = [{"role": "user", "content": "What's the weather like in Paris right now?"}]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "languages": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
    },
    "required": ["name", "age", "languages"],
    "additionalProperties": False,
}
# What the weather tool returned, asked back as JSON: the 0.5B test model cannot be relied on to
# phrase a prose answer after a tool result (llama-server with the model's own template writes
# more tool calls too), but with the answer constrained to this shape its values must come from
# the result that was fed back.
READING = {
    "type": "object",
    "properties": {"temperature": {"type": "integer"}, "sky": {"type": "string"}},
    "required": ["temperature", "sky"],
    "additionalProperties": False,
}


def forced(client, model, **kw):
    return client.chat.completions.create(
        model=model,
        messages=kw.pop("messages", ASK),
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=64,
        **kw,
    )


def check_weather_call(call):
    assert call.type == "function" and call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, WEATHER["function"]["parameters"])
    return args


def test_tools_forced_call_has_required_arguments(client, model, real_model):
    r = forced(client, model)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(choice.message.tool_calls) == 1
    args = check_weather_call(choice.message.tool_calls[0])
    assert "paris" in args["city"].lower()


def test_tools_required_picks_a_defined_tool(client, model, real_model):
    r = client.chat.completions.create(
        model=model, messages=ASK, tools=[WEATHER, TIME], tool_choice="required", temperature=0, max_tokens=64
    )
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    tool = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


def test_tools_forced_call_streamed(client, model, real_model):
    stream = forced(client, model, stream=True)
    calls, finish = {}, None
    for chunk in stream:
        for c in chunk.choices:
            for d in c.delta.tool_calls or []:
                slot = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                slot["id"] = d.id or slot["id"]
                slot["name"] += (d.function.name or "") if d.function else ""
                slot["arguments"] += (d.function.arguments or "") if d.function else ""
            finish = c.finish_reason or finish
    assert finish == "tool_calls"
    assert calls[0]["name"] == "get_weather" and calls[0]["id"]
    jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER["function"]["parameters"])


def test_tools_result_round_trip(client, model, real_model):
    first = forced(client, model).choices[0].message
    call = first.tool_calls[0]
    messages = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 23, "unit": "celsius", "sky": "sunny"})},
    ]
    fmt = {"type": "json_schema", "json_schema": {"name": "reading", "schema": READING, "strict": True}}
    r = client.chat.completions.create(
        model=model, messages=messages, tools=[WEATHER, TIME], tool_choice="none", response_format=fmt,
        temperature=0, max_tokens=48,
    )
    answer = r.choices[0].message
    assert r.choices[0].finish_reason == "stop"
    assert not answer.tool_calls
    reading = json.loads(answer.content)
    assert (reading["temperature"], reading["sky"]) == (23, "sunny"), reading


def test_tools_none_answers_in_text(client, model, real_model):
    r = client.chat.completions.create(
        model=model, messages=ASK, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=16
    )
    assert not r.choices[0].message.tool_calls
    assert r.choices[0].message.content


def test_structured_json_schema_validates(client, model, real_model):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    messages = [{"role": "user", "content": "Invent a programmer and describe them."}]
    r = client.chat.completions.create(model=model, messages=messages, response_format=fmt, temperature=0, max_tokens=96)
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
    stream = client.chat.completions.create(
        model=model, messages=messages, response_format=fmt, temperature=0, max_tokens=96, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == r.choices[0].message.content


def test_structured_json_object(client, model, real_model):
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Give the capital of France as JSON."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=48,
    )
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_structured_sampled_not_greedy_still_validates(client, model, real_model):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for seed in (1, 2):
        r = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Describe someone."}],
            response_format=fmt,
            temperature=1.0,
            seed=seed,
            max_tokens=96,
        )
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)


def test_tools_errors(client, model):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=model, messages=ASK, tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "not_defined"}},
        )
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model, messages=ASK, tool_choice="required")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model, messages=ASK, response_format={"type": "xml"})


def test_anthropic_forced_tool_use_and_result(anthropic_client, model, real_model):
    tool = {"name": "get_weather", "description": WEATHER["function"]["description"],
            "input_schema": WEATHER["function"]["parameters"]}
    r = anthropic_client.messages.create(
        model=model, max_tokens=64, extra_body={"temperature": 0}, tools=[tool],
        tool_choice={"type": "tool", "name": "get_weather"}, messages=ASK,
    )
    assert r.stop_reason == "tool_use"
    use = [b for b in r.content if b.type == "tool_use"][0]
    assert use.name == "get_weather"
    jsonschema.validate(use.input, tool["input_schema"])
    report = {"name": "report_weather", "description": "Report the weather to the user",
              "input_schema": READING}
    follow = anthropic_client.messages.create(
        model=model, max_tokens=48, extra_body={"temperature": 0}, tools=[tool, report],
        tool_choice={"type": "tool", "name": "report_weather"},
        messages=ASK + [
            {"role": "assistant", "content": [b.model_dump() for b in r.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                          "content": "23 degrees celsius and sunny"}]},
        ],
    )
    reported = [b for b in follow.content if b.type == "tool_use"][0].input
    assert (reported["temperature"], reported["sky"]) == (23, "sunny"), reported
    with anthropic_client.messages.stream(
        model=model, max_tokens=64, extra_body={"temperature": 0}, tools=[tool],
        tool_choice={"type": "tool", "name": "get_weather"}, messages=ASK,
    ) as stream:
        final = stream.get_final_message()
    streamed = [b for b in final.content if b.type == "tool_use"][0]
    assert streamed.input == use.input


def test_ollama_tools_and_format(ollama_client, model, real_model):
    r = ollama_client.chat(model=model, messages=ASK, tools=[WEATHER], options={"temperature": 0, "num_predict": 64})
    # Ollama has no tool choice: the model decides; with tools it should call one here, and the
    # grammar does not force it, so only check what came back is well-formed.
    for call in r.message.tool_calls or []:
        assert call.function.name == "get_weather"
        assert isinstance(call.function.arguments, dict)
    j = ollama_client.chat(
        model=model,
        messages=[{"role": "user", "content": "Invent a programmer and describe them."}],
        format=PERSON,
        options={"temperature": 0, "num_predict": 96},
    )
    jsonschema.validate(json.loads(j.message.content), PERSON)
    g = ollama_client.generate(model=model, prompt="The capital of France, as JSON.", format="json",
                               options={"temperature": 0, "num_predict": 48})
    assert isinstance(json.loads(g.response), dict)
