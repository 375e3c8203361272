"""Tool calls on a server with `--enable-auto-tool-choice --tool-call-parser hermes`, checked
against the emulator and against real vLLM 0.26.0.

The target serves the conformance checkpoint as `tiny-tools`. Its weights are random, so with
`tool_choice: "auto"` the model decides freely between text and a hermes `<tool_call>`: both
answers are checked for the OpenAI shape, and `finish_reason` must agree with whether a call
was parsed (`tool_calls` when one was, `stop`/`length` otherwise). `"required"` and a named
choice are constrained to the parser's own `<tool_call>` format; vLLM 0.26 then parses the text
as for `"auto"`. A complete call is a tool call whose arguments are JSON of the tool's schema
(`tool_calls`); a call cut short by max_tokens is not parsed at all: `length`, the `<tool_call>`
text as content and no `tool_calls` key (what the random-weight model gave on the H200, where it
wrote JSON whitespace inside the grammar until max_tokens; routes entries 20 and 21).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conformance.target import TOOLS_MODEL

pytestmark = pytest.mark.process

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
    "required": ["ok", "n"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": SCHEMA,
    },
}
OTHER = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}


def chat(max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": TOOLS_MODEL,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "tools": [WEATHER, OTHER],
        **extra,
    }


async def answer(c: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    r = await c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    assert out["object"] == "chat.completion"
    assert out["model"] == TOOLS_MODEL
    choice: dict[str, Any]
    (choice,) = out["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    return choice


def calls_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The message's tool calls, each with the OpenAI shape ([] or an absent key: none)."""
    calls: list[dict[str, Any]] = message.get("tool_calls") or []
    for call in calls:
        assert call["type"] == "function"
        assert isinstance(call["id"], str)
        assert call["id"]
        assert call["function"]["name"] in ("get_weather", "get_time")
        assert isinstance(call["function"]["arguments"], str)
    return calls


def check_arguments(call: dict[str, Any]) -> None:
    value = json.loads(call["function"]["arguments"])
    assert isinstance(value, dict)
    if call["function"]["name"] == "get_weather":
        assert set(value) == {"ok", "n"}
        assert isinstance(value["ok"], bool)
        assert isinstance(value["n"], int)
        assert not isinstance(value["n"], bool)


def events_of(text: str) -> list[dict[str, Any]]:
    assert text.endswith("data: [DONE]\n\n")
    blocks = text.split("\n\n")[:-1]
    assert all(b.startswith("data: ") for b in blocks), blocks[:2]
    return [json.loads(b[len("data: ") :]) for b in blocks[:-1]]


@pytest.mark.parametrize("choice", ["auto", None], ids=["auto", "default"])
async def test_auto_tool_choice_answers_text_or_a_call(
    tools_client: httpx.AsyncClient, choice: str | None
) -> None:
    extra = {} if choice is None else {"tool_choice": choice}
    out = await answer(tools_client, chat(32, **extra))
    calls = calls_of(out["message"])
    if calls:
        assert out["finish_reason"] == "tool_calls"
        assert out["message"]["content"] is None or isinstance(out["message"]["content"], str)
        for call in calls:
            check_arguments(call)
    else:
        assert out["finish_reason"] in ("stop", "length")
        assert isinstance(out["message"]["content"], str)


async def test_auto_tool_choice_stream(tools_client: httpx.AsyncClient) -> None:
    r = await tools_client.post(
        "/v1/chat/completions", json=chat(32, tool_choice="auto", stream=True)
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = events_of(r.text)
    assert events
    ids = {e["id"] for e in events}
    assert len(ids) == 1
    for e in events:
        assert e["object"] == "chat.completion.chunk"
        assert e["model"] == TOOLS_MODEL
        (one,) = e["choices"]
        assert one["index"] == 0
        assert isinstance(one["delta"], dict)
    assert events[0]["choices"][0]["delta"].get("role") == "assistant"
    finishes = [e["choices"][0]["finish_reason"] for e in events]
    assert all(f is None for f in finishes[:-1])
    deltas = [d for e in events for d in e["choices"][0]["delta"].get("tool_calls") or []]
    if deltas:
        assert finishes[-1] == "tool_calls"
        first = deltas[0]
        assert first["type"] == "function"
        assert isinstance(first["id"], str)
        assert first["function"]["name"] in ("get_weather", "get_time")
    else:
        assert finishes[-1] in ("stop", "length")


def check_cut_short(out: dict[str, Any], name: str | None) -> None:
    """A forced call that max_tokens cut short: the unparsed `<tool_call>` text, no call."""
    assert out["finish_reason"] == "length"
    assert "tool_calls" not in out["message"]
    head = '<tool_call>\n{"name": ' + (f'"{name}", "arguments": ' if name else "")
    assert out["message"]["content"].startswith(head), out["message"]["content"][:80]


async def test_required_tool_choice_answers_a_call(tools_client: httpx.AsyncClient) -> None:
    out = await answer(tools_client, chat(128, tool_choice="required"))
    if out["finish_reason"] == "tool_calls":  # the grammar was completed: valid JSON
        (call,) = calls_of(out["message"])
        check_arguments(call)
    else:
        check_cut_short(out, None)


async def test_named_tool_choice_answers_that_tool(tools_client: httpx.AsyncClient) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    out = await answer(tools_client, chat(128, tool_choice=named))
    if out["finish_reason"] == "tool_calls":  # parsed as for "auto" (not yet seen on a GPU)
        (call,) = calls_of(out["message"])
        assert call["function"]["name"] == "get_weather"
        check_arguments(call)
    else:
        check_cut_short(out, "get_weather")


async def test_tool_choice_none_answers_text(tools_client: httpx.AsyncClient) -> None:
    out = await answer(tools_client, chat(8, tool_choice="none"))
    assert not calls_of(out["message"])
    assert isinstance(out["message"]["content"], str)
    assert out["finish_reason"] in ("stop", "length")


async def test_unknown_named_tool_is_400(tools_client: httpx.AsyncClient) -> None:
    named = {"type": "function", "function": {"name": "nope"}}
    r = await tools_client.post("/v1/chat/completions", json=chat(8, tool_choice=named))
    assert r.status_code == 400, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
