"""The comparator must catch what it claims to catch (otherwise conformance proves nothing)."""

from __future__ import annotations

import json

from tests.conformance.compare import (
    diff_json,
    diff_response,
    diff_response_as,
    diff_shape,
    parse_sse,
)


def _entry(status: int, body: str, content_type: str = "application/json") -> dict[str, object]:
    return {
        "req": {"method": "POST", "path": "/x"},
        "status": status,
        "headers": {"content-type": content_type},
        "body": body,
    }


def test_volatile_values_are_ignored_but_their_types_are_not() -> None:
    assert diff_json({"id": "a", "created": 1}, {"id": "b", "created": 2}) == []
    assert diff_json({"id": "a"}, {"id": 3}) != []


def test_key_order_and_missing_keys_are_differences() -> None:
    assert diff_json({"a": 1, "b": 2}, {"b": 2, "a": 1}) != []
    assert diff_json({"a": 1, "b": 2}, {"a": 1}) != []


def test_stable_values_must_match() -> None:
    assert diff_json({"finish_reason": "length"}, {"finish_reason": "stop"}) != []
    assert diff_json({"object": "chat.completion"}, {"object": "chat.completion"}) == []


def test_error_bodies_must_match_exactly() -> None:
    rec = _entry(
        404, json.dumps({"error": {"message": "The model `x` does not exist.", "code": 404}})
    )
    same = json.dumps({"error": {"message": "The model `x` does not exist.", "code": 404}})
    other = json.dumps({"error": {"message": "The model `y` does not exist.", "code": 404}})
    assert diff_response(rec, 404, {"content-type": "application/json"}, same) == []
    assert diff_response(rec, 404, {"content-type": "application/json"}, other) != []
    assert diff_response(rec, 400, {"content-type": "application/json"}, same) != []


def test_sse_event_count_and_framing_are_checked() -> None:
    body = 'data: {"a":1}\n\ndata: [DONE]\n\n'
    rec = _entry(200, body, "text/event-stream; charset=utf-8")
    assert diff_response(rec, 200, {"content-type": "text/event-stream; charset=utf-8"}, body) == []
    assert (
        diff_response(
            rec, 200, {"content-type": "text/event-stream; charset=utf-8"}, "data: [DONE]\n\n"
        )
        != []
    )
    assert parse_sse(body) == ['{"a":1}', "[DONE]"]


def test_shape_ignores_values_and_lengths_but_not_keys_or_types() -> None:
    want = {"data": [{"index": 0, "embedding": [0.5, 0.25]}], "model": "m"}
    assert diff_shape(want, {"data": [{"index": 3, "embedding": [1.0]}], "model": "x"}) == []
    assert diff_shape(want, {"data": [{"embedding": [1.0], "index": 0}], "model": "m"}) != []
    assert diff_shape(want, {"data": [{"index": "0", "embedding": []}], "model": "m"}) != []
    assert diff_shape({"content": None}, {"content": "text"}) != []


def test_shape_of_completion_top_logprobs_ignores_the_token_keys_only() -> None:
    want = {"logprobs": {"top_logprobs": [{"jnu": -6.4, " as": -6.5}]}}
    assert diff_shape(want, {"logprobs": {"top_logprobs": [{" x": -0.2, "y": -1.0}]}}) == []
    assert diff_shape(want, {"logprobs": {"top_logprobs": [{" x": "-0.2"}]}}) != []
    chat = {"logprobs": {"content": [{"top_logprobs": [{"token": "a", "logprob": -1.0}]}]}}
    renamed = {"logprobs": {"content": [{"top_logprobs": [{"tok": "a", "logprob": -1.0}]}]}}
    assert diff_shape(chat, renamed) != []  # chat's top_logprobs entries keep their keys


def test_checks_of_the_routes_recording() -> None:
    ok = _entry(200, json.dumps({"score": 0.5}))
    assert diff_response_as(
        "shape", ok, 200, {"content-type": "application/json"}, '{"score": "1"}'
    )
    assert diff_response_as("shape", ok, 200, {"content-type": "application/json"}, '{"s": 1}')
    assert not diff_response_as(
        "shape", ok, 200, {"content-type": "application/json"}, '{"score": -0.1}'
    )
    assert not diff_response_as("status", ok, 200, {"content-type": "application/json"}, "{}")
    assert diff_response_as("status", ok, 404, {"content-type": "application/json"}, "{}")
    error = _entry(400, json.dumps({"error": {"message": "a"}}))
    got = json.dumps({"error": {"message": "b"}})
    assert diff_response_as("status", error, 400, {"content-type": "application/json"}, got)


def test_shape_of_streams_compares_first_and_last_events() -> None:
    want = 'event: a\ndata: {"x": 1}\n\nevent: b\ndata: {"y": 2}\n\n'
    stream = _entry(200, want, "text/event-stream")
    headers = {"content-type": "text/event-stream"}
    same = 'event: a\ndata: {"x": 5}\n\nevent: m\ndata: {}\n\nevent: b\ndata: {"y": 0}\n\n'
    assert not diff_response_as("shape", stream, 200, headers, same)
    assert diff_response_as("shape", stream, 200, headers, 'event: a\ndata: {"x": 1}\n\n')
