"""The comparator must catch what it claims to catch (otherwise conformance proves nothing)."""

from __future__ import annotations

import json

from tests.conformance.compare import diff_json, diff_response, parse_sse


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
