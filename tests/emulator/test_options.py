"""Chat and completion options the emulator honours: n, logprobs, response_format, tools."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest

from tests.helpers.processes import EmulatorProcess, Spawn, emulator_stats

AUTO_TOOLS = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city", "days"],
        },
    },
}
OTHER = {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "score": {"type": "number", "minimum": 2},
    },
    "required": ["name", "tags", "score"],
}


def chat(**extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 64, **extra}


def started(spawn: Spawn, *args: str) -> EmulatorProcess:
    emu = spawn(*args)
    emu.wait_listening()
    return emu


def sse_events(text: str) -> list[dict[str, Any]]:
    lines = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_n_choices_each_an_engine_request(spawn: Spawn) -> None:
    emu = started(spawn)
    r = httpx.post(f"{emu.url}/v1/chat/completions", json=chat(n=3, temperature=1.0, seed=1))
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    texts = {c["message"]["content"] for c in body["choices"]}
    assert len(texts) == 3, "sampled choices differ"
    assert emulator_stats(emu.url)["stats"]["requests_received"] == 3  # type: ignore[index]
    greedy = httpx.post(f"{emu.url}/v1/chat/completions", json=chat(n=2, temperature=0)).json()
    assert len({c["message"]["content"] for c in greedy["choices"]}) == 1


def test_n_streams_chunks_per_index(spawn: Spawn) -> None:
    emu = started(spawn)
    r = httpx.post(
        f"{emu.url}/v1/chat/completions",
        json=chat(
            n=2, max_tokens=5, ignore_eos=True, stream=True, stream_options={"include_usage": True}
        ),
    )
    events = sse_events(r.text)
    roles = [e["choices"][0]["index"] for e in events[:2]]
    assert roles == [0, 1]
    assert all(e["choices"][0]["delta"]["role"] == "assistant" for e in events[:2])
    finishes = {
        e["choices"][0]["index"]: e["choices"][0]["finish_reason"]
        for e in events
        if e["choices"] and e["choices"][0]["finish_reason"]
    }
    assert finishes == {0: "length", 1: "length"}
    assert events[-1]["choices"] == []
    assert events[-1]["usage"]["completion_tokens"] == 10


def test_chat_logprobs_shape(spawn: Spawn) -> None:
    emu = started(spawn)
    body = httpx.post(
        f"{emu.url}/v1/chat/completions",
        json=chat(max_tokens=4, ignore_eos=True, logprobs=True, top_logprobs=3),
    ).json()
    choice = body["choices"][0]
    content = choice["logprobs"]["content"]
    assert "".join(e["token"] for e in content) == choice["message"]["content"]
    for entry in content:
        assert entry["bytes"] == list(entry["token"].encode())
        tops = entry["top_logprobs"]
        assert len(tops) == 3
        assert tops[0]["token"] == entry["token"]
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
        assert all(t["logprob"] <= 0 for t in tops)


def test_completion_logprobs_shape(spawn: Spawn) -> None:
    emu = started(spawn)
    body = httpx.post(
        f"{emu.url}/v1/completions",
        json={"prompt": "The Moon", "max_tokens": 4, "ignore_eos": True, "logprobs": 2, "n": 2},
    ).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    for choice in body["choices"]:
        lp = choice["logprobs"]
        assert "".join(lp["tokens"]) == choice["text"]
        assert len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 4
        assert lp["text_offset"][0] == 0
        assert all(len(t) == 2 for t in lp["top_logprobs"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"top_logprobs": 2}, "when using `top_logprobs`, `logprobs` must be set to true."),
        ({"logprobs": True, "top_logprobs": 21}, "greater than max allowed: 20"),
        ({"n": 0}, "n must be at least 1, got 0."),
        ({"tool_choice": "auto"}, "When using `tool_choice`, `tools` must be set."),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "does not match",
        ),
    ],
)
def test_option_errors_are_vllm_400s(spawn: Spawn, extra: dict[str, Any], message: str) -> None:
    emu = started(spawn)
    r = httpx.post(f"{emu.url}/v1/chat/completions", json=chat(**extra))
    assert r.status_code == 400
    assert message in r.json()["error"]["message"]


def test_json_schema_output_validates(spawn: Spawn) -> None:
    emu = started(spawn)
    fmt = {"type": "json_schema", "json_schema": {"name": "card", "schema": SCHEMA}}
    for stream in (False, True):
        r = httpx.post(
            f"{emu.url}/v1/chat/completions", json=chat(response_format=fmt, stream=stream)
        )
        if stream:
            events = sse_events(r.text)
            text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
        else:
            assert r.json()["choices"][0]["finish_reason"] == "stop"
            text = r.json()["choices"][0]["message"]["content"]
        jsonschema.validate(json.loads(text), SCHEMA)


def test_json_object_and_unsupported_schema(spawn: Spawn) -> None:
    emu = started(spawn)
    r = httpx.post(
        f"{emu.url}/v1/chat/completions", json=chat(response_format={"type": "json_object"})
    )
    assert isinstance(json.loads(r.json()["choices"][0]["message"]["content"]), dict)
    bad = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "a+"}},
    }
    r = httpx.post(f"{emu.url}/v1/chat/completions", json=chat(response_format=bad))
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "response_format"


def test_auto_tool_choice_needs_the_flags(spawn: Spawn) -> None:
    emu = started(spawn)
    r = httpx.post(f"{emu.url}/v1/chat/completions", json=chat(tools=[WEATHER]))
    assert (r.status_code, r.json()) == (
        400,
        {
            "error": {
                "message": '"auto" tool choice requires --enable-auto-tool-choice and '
                "--tool-call-parser to be set",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            }
        },
    )
    text = httpx.post(
        f"{emu.url}/v1/chat/completions", json=chat(tools=[WEATHER], tool_choice="none")
    )
    assert text.json()["choices"][0]["message"]["content"]
    assert "tool_calls" not in text.json()["choices"][0]["message"]


NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.mark.parametrize("choice", ["auto", "required", NAMED], ids=["auto", "required", "named"])
def test_tool_calls(spawn: Spawn, choice: Any) -> None:
    emu = started(spawn, *AUTO_TOOLS)
    body = chat(tools=[WEATHER, OTHER], tool_choice=choice, max_tokens=128)
    choice0 = httpx.post(f"{emu.url}/v1/chat/completions", json=body).json()["choices"][0]
    assert choice0["finish_reason"] == "tool_calls"
    assert choice0["message"]["content"] is None
    (call,) = choice0["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(
        json.loads(call["function"]["arguments"]), WEATHER["function"]["parameters"]
    )
    events = sse_events(
        httpx.post(f"{emu.url}/v1/chat/completions", json={**body, "stream": True}).text
    )
    deltas = [d for e in events for d in e["choices"][0]["delta"].get("tool_calls", [])]
    assert deltas[0]["function"]["name"] == "get_weather"
    assert deltas[0]["id"]
    assert all("id" not in d for d in deltas[1:])
    arguments = "".join(d["function"]["arguments"] for d in deltas)
    assert arguments == call["function"]["arguments"]
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("choice", ["required", NAMED], ids=["required", "named"])
def test_a_tagged_call_cut_short_stays_text(spawn: Spawn, choice: Any) -> None:
    """As vLLM 0.26 on the H200 (routes entries 20, 21): the `<tool_call>` text, no call."""
    emu = started(spawn, *AUTO_TOOLS)
    body = chat(tools=[WEATHER, OTHER], tool_choice=choice, max_tokens=64)
    choice0 = httpx.post(f"{emu.url}/v1/chat/completions", json=body).json()["choices"][0]
    assert choice0["finish_reason"] == "length"
    assert "tool_calls" not in choice0["message"]
    assert choice0["message"]["content"].startswith(
        '<tool_call>\n{"name": "get_weather", "arguments": {\n\n'
    )


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        (NAMED, 'tool_choice=function "get_weather" requires --tool-call-parser to be set'),
        ("required", 'tool_choice="required" requires --tool-call-parser to be set'),
    ],
    ids=["named", "required"],
)
def test_forced_tool_choice_needs_a_parser(spawn: Spawn, choice: Any, message: str) -> None:
    emu = started(spawn)
    r = httpx.post(f"{emu.url}/v1/chat/completions", json=chat(tools=[WEATHER], tool_choice=choice))
    assert (r.status_code, r.json()) == (
        400,
        {"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}},
    )


def test_auto_tool_flag_without_parser_is_a_startup_error(spawn: Spawn) -> None:
    emu = spawn("--enable-auto-tool-choice")
    assert emu.wait_exit() == 1
    assert "--enable-auto-tool-choice requires --tool-call-parser" in emu.log()
