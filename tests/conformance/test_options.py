"""Chat and completion options, checked against the emulator and against real vLLM 0.26.0.

Only what real vLLM does whatever its weights: the conformance model has random weights, so
generated text is arbitrary; a grammar-constrained answer is checked for JSON only when it
ended with `stop` (a random model may still be writing when max_tokens runs out). Both real
servers run without `--enable-auto-tool-choice` and `--tool-call-parser`, so `"auto"` and a
named choice are checked as the 400s they are (0.26 constrains a named choice to the tool
parser's format, so it needs one; tests/conformance/test_tools.py checks it on a server with one).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
    "required": ["ok", "n"],
    "additionalProperties": False,
}
TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": SCHEMA},
}


def chat(max_tokens: int = 4, **extra: Any) -> dict[str, Any]:
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Give me a fun fact about the Moon."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        **extra,
    }


async def post(
    c: httpx.AsyncClient, body: dict[str, Any], path: str = "/v1/chat/completions"
) -> Any:
    r = await c.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def events_of(text: str) -> list[dict[str, Any]]:
    data = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def check_schema_instance(value: Any) -> None:
    assert isinstance(value, dict)
    assert set(value) == {"ok", "n"}
    assert isinstance(value["ok"], bool)
    assert isinstance(value["n"], int)
    assert not isinstance(value["n"], bool)


async def test_n_choices_and_usage(client: httpx.AsyncClient) -> None:
    body = await post(client, chat(4, n=2, temperature=1.0, seed=7))
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert all(c["finish_reason"] == "length" for c in body["choices"])
    assert body["usage"]["completion_tokens"] == 8


async def test_n_streams_a_role_chunk_and_a_finish_per_index(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/chat/completions",
        json=chat(3, n=2, temperature=1.0, stream=True, stream_options={"include_usage": True}),
    )
    events = events_of(r.text)
    roles = sorted(
        e["choices"][0]["index"]
        for e in events
        if e["choices"] and "role" in e["choices"][0]["delta"]
    )
    assert roles == [0, 1]
    finishes = sorted(
        (e["choices"][0]["index"], e["choices"][0]["finish_reason"])
        for e in events
        if e["choices"] and e["choices"][0]["finish_reason"]
    )
    assert finishes == [(0, "length"), (1, "length")]
    assert events[-1]["choices"] == []
    assert events[-1]["usage"]["completion_tokens"] == 6


async def test_chat_logprobs(client: httpx.AsyncClient) -> None:
    body = await post(client, chat(4, logprobs=True, top_logprobs=2))
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 4
    for entry in content:
        assert list(entry) == ["token", "logprob", "bytes", "top_logprobs"]
        assert entry["logprob"] <= 0
        assert len(entry["top_logprobs"]) == 2
        assert entry["top_logprobs"][0]["token"] == entry["token"]  # greedy: rank 1
        assert all(list(t) == ["token", "logprob", "bytes"] for t in entry["top_logprobs"])


async def test_chat_logprobs_in_stream(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json=chat(3, logprobs=True, stream=True))
    events = events_of(r.text)
    assert events[0]["choices"][0]["logprobs"] is None  # the role chunk
    entries = [
        entry
        for e in events[1:]
        if e["choices"][0]["logprobs"] is not None
        for entry in e["choices"][0]["logprobs"]["content"]
    ]
    assert len(entries) == 3
    assert all(entry["top_logprobs"] == [] for entry in entries)


async def test_completion_logprobs(client: httpx.AsyncClient) -> None:
    body = await post(
        client,
        {
            "model": "tiny",
            "prompt": "The Moon",
            "max_tokens": 4,
            "temperature": 0,
            "ignore_eos": True,
            "logprobs": 2,
        },
        "/v1/completions",
    )
    lp = body["choices"][0]["logprobs"]
    assert list(lp) == ["text_offset", "token_logprobs", "tokens", "top_logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"]) == 4
    assert lp["text_offset"] == sorted(lp["text_offset"])
    assert all(1 <= len(top) <= 3 for top in lp["top_logprobs"])


@pytest.mark.parametrize(
    "extra",
    [
        {"top_logprobs": 2},
        {"logprobs": True, "top_logprobs": 21},
        {"n": 0},
        {"tool_choice": "required"},
        {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
    ],
    ids=["top-without-logprobs", "top-over-max", "n-zero", "choice-without-tools", "unknown-tool"],
)
async def test_invalid_options_are_400(client: httpx.AsyncClient, extra: dict[str, Any]) -> None:
    r = await client.post("/v1/chat/completions", json=chat(4, **extra))
    assert r.status_code == 400, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


async def test_auto_tool_choice_without_the_flags_is_400(client: httpx.AsyncClient) -> None:
    for extra in ({"tools": [TOOL]}, {"tools": [TOOL], "tool_choice": "auto"}):
        r = await client.post("/v1/chat/completions", json=chat(16, **extra))
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


async def test_tool_choice_none_answers_text(client: httpx.AsyncClient) -> None:
    body = await post(client, chat(4, tools=[TOOL], tool_choice="none"))
    message = body["choices"][0]["message"]
    assert isinstance(message["content"], str)
    assert "tool_calls" not in message
    assert body["choices"][0]["finish_reason"] == "length"


async def test_named_tool_choice_without_a_parser_is_400(client: httpx.AsyncClient) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    r = await client.post(
        "/v1/chat/completions", json=chat(64, tools=[TOOL], tool_choice=named, ignore_eos=False)
    )
    assert (r.status_code, r.json()) == (
        400,
        {
            "error": {
                "message": 'tool_choice=function "get_weather" requires --tool-call-parser to be set',
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            }
        },
    )


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "fact", "schema": SCHEMA}},
    ],
    ids=["json_object", "json_schema"],
)
async def test_response_format_json(
    client: httpx.AsyncClient, response_format: dict[str, Any]
) -> None:
    body = await post(client, chat(64, response_format=response_format, ignore_eos=False))
    choice = body["choices"][0]
    assert choice["finish_reason"] in ("stop", "length")
    if choice["finish_reason"] == "stop":
        value = json.loads(choice["message"]["content"])
        if response_format["type"] == "json_schema":
            check_schema_instance(value)
        else:
            assert isinstance(value, dict)
