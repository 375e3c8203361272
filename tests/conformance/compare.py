"""Compare a live response with a recorded vLLM 0.26.0 response.

Rules: the status must match; `content-type` and `allow` headers must match; error bodies
(`{"error": ...}` or `{"detail": ...}`) must match byte for byte; other JSON bodies must have
the same shape (same keys in the same order, same JSON types, recursively) and the same values
except for ids, timestamps, generated text and tokenizer-dependent counts; SSE bodies must have
the same number of events, each compared with the same JSON rules, ending in `[DONE]`.
`diff_response_as` adds the looser checks of the routes recording (shape only, status only),
for answers whose values or structure the random weights decide.
"""

from __future__ import annotations

import json
import re
from typing import Any

VOLATILE = frozenset(
    {
        "id",
        "created",
        "system_fingerprint",
        "content",
        "text",
        "root",
        "prompt_tokens",
        "total_tokens",
        "tokens",
        "count",
        "prompt",
    }
)


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return type(v).__name__


def diff_json(want: Any, got: Any, path: str = "$") -> list[str]:
    """Differences between two JSON values under the shape-and-stable-values rules."""
    if _kind(want) != _kind(got):
        return [f"{path}: type {_kind(got)} != recorded {_kind(want)} ({got!r} vs {want!r})"]
    if isinstance(want, dict):
        if list(want) != list(got):
            return [f"{path}: keys {list(got)} != recorded {list(want)}"]
        out: list[str] = []
        for k in want:
            if k in VOLATILE and not isinstance(want[k], (dict, list)):
                if _kind(want[k]) != _kind(got[k]):
                    out.append(f"{path}.{k}: type {_kind(got[k])} != recorded {_kind(want[k])}")
                continue
            out += diff_json(want[k], got[k], f"{path}.{k}")
        return out
    if isinstance(want, list):
        if path.endswith(".tokens"):
            return []
        if len(want) != len(got):
            return [f"{path}: {len(got)} items != recorded {len(want)}"]
        return [
            d
            for i, (w, g) in enumerate(zip(want, got, strict=True))
            for d in diff_json(w, g, f"{path}[{i}]")
        ]
    return [] if want == got else [f"{path}: {got!r} != recorded {want!r}"]


def parse_sse(body: str) -> list[str]:
    if not body.endswith("\n\n"):
        raise ValueError(f"SSE body does not end with a blank line: {body[-40:]!r}")
    events = body.split("\n\n")[:-1]
    bad = [e for e in events if not e.startswith("data: ")]
    if bad:
        raise ValueError(f"SSE events not framed as 'data: ...': {bad[:2]!r}")
    return [e[len("data: ") :] for e in events]


def _is_error_body(value: Any) -> bool:
    return isinstance(value, dict) and ("error" in value or "detail" in value)


def diff_response(
    recorded: dict[str, Any], status: int, headers: dict[str, str], body: str
) -> list[str]:
    """All differences between a recorded transcript entry and a live response."""
    out = []
    if status != recorded["status"]:
        out.append(f"status {status} != recorded {recorded['status']}")
    rec_headers = {k.lower(): v for k, v in recorded["headers"].items()}
    got_headers = {k.lower(): v for k, v in headers.items()}
    for name in ("content-type", "allow"):
        if rec_headers.get(name) != got_headers.get(name):
            out.append(
                f"header {name}: {got_headers.get(name)!r} != recorded {rec_headers.get(name)!r}"
            )
    want_body: str = recorded["body"]
    content_type = rec_headers.get("content-type", "")
    if recorded["req"]["method"] == "HEAD" or not want_body:
        if body != want_body and recorded["req"]["method"] != "HEAD":
            out.append(f"body {body[:80]!r} != recorded empty body")
        return out
    if content_type.startswith("text/event-stream"):
        try:
            want_events, got_events = parse_sse(want_body), parse_sse(body)
        except ValueError as exc:
            return [*out, str(exc)]
        if len(want_events) != len(got_events):
            return [*out, f"{len(got_events)} SSE events != recorded {len(want_events)}"]
        for i, (w, g) in enumerate(zip(want_events, got_events, strict=True)):
            if w == "[DONE]" or g == "[DONE]":
                if w != g:
                    out.append(f"event {i}: {g[:60]!r} != recorded {w!r}")
                continue
            out += diff_json(json.loads(w), json.loads(g), f"event[{i}]")
        return out
    if content_type.startswith("application/json"):
        want, got = json.loads(want_body), json.loads(body)
        if _is_error_body(want):
            if want != got:
                out.append(f"error body {got!r} != recorded {want!r}")
            return out
        return out + diff_json(want, got)
    # text (Prometheus): every recorded line that is not a histogram/counter value must appear
    got_lines = set(body.splitlines())
    missing = [line for line in want_body.splitlines() if line and line not in got_lines]
    return out + [f"metrics line missing: {line}" for line in missing]


# How the weight-dependent entries of the routes recording are compared (its "check" field):
# "exact" is diff_response; "shape" compares JSON by keys, key order and types only (strings
# and numbers of any value, lists by their first items, any length), SSE by its first and last
# events; "status" compares the status and headers only (an answer whose very structure the
# random weights decide, such as text or a tool call under tool_choice "auto").
CHECKS = ("exact", "shape", "status")


def _token_map(path: str) -> bool:
    """A completions `top_logprobs` entry: a map keyed by token text, which the weights pick."""
    return re.search(r"\.logprobs\.top_logprobs\[\d+\]$", path) is not None


def diff_shape(want: Any, got: Any, path: str = "$") -> list[str]:
    """Differences in structure only: keys in order and JSON types, recursively (the keys of a
    token map are data: only its value types are compared)."""
    if _kind(want) != _kind(got):
        return [f"{path}: type {_kind(got)} != recorded {_kind(want)}"]
    if isinstance(want, dict) and _token_map(path):
        kinds = {_kind(v) for v in want.values()}
        odd = sorted({_kind(v) for v in got.values()} - kinds) if kinds else []
        return [f"{path}: token map values {odd} != recorded {sorted(kinds)}"] if odd else []
    if isinstance(want, dict):
        if list(want) != list(got):
            return [f"{path}: keys {list(got)} != recorded {list(want)}"]
        return [d for k in want for d in diff_shape(want[k], got[k], f"{path}.{k}")]
    if isinstance(want, list) and want and got:
        return diff_shape(want[0], got[0], f"{path}[0]")
    return []


def _sse_blocks(body: str) -> list[str]:
    if not body.endswith("\n\n"):
        raise ValueError(f"SSE body does not end with a blank line: {body[-40:]!r}")
    return body.split("\n\n")[:-1]


def _block_shape(want: str, got: str, where: str) -> list[str]:
    """One SSE block: `event:` lines equal, `data:` JSON of the same shape ([DONE] equal)."""
    w_lines, g_lines = want.split("\n"), got.split("\n")
    if [line for line in w_lines if not line.startswith("data: ")] != [
        line for line in g_lines if not line.startswith("data: ")
    ]:
        return [f"{where}: {got[:60]!r} != recorded {want[:60]!r}"]
    w_data = [line[6:] for line in w_lines if line.startswith("data: ")]
    g_data = [line[6:] for line in g_lines if line.startswith("data: ")]
    if len(w_data) != len(g_data):
        return [f"{where}: {len(g_data)} data lines != recorded {len(w_data)}"]
    out = []
    for w, g in zip(w_data, g_data, strict=True):
        if "[DONE]" in (w, g):
            out += [] if w == g else [f"{where}: {g[:60]!r} != recorded {w!r}"]
        else:
            out += diff_shape(json.loads(w), json.loads(g), where)
    return out


def diff_response_as(
    check: str, recorded: dict[str, Any], status: int, headers: dict[str, str], body: str
) -> list[str]:
    """diff_response under an entry's `check` (see CHECKS); error answers are always exact."""
    if check not in CHECKS:
        raise ValueError(f"unknown check {check!r}; known: {CHECKS}")
    if check == "exact" or recorded["status"] >= 400:
        return diff_response(recorded, status, headers, body)
    out = diff_response({**recorded, "body": ""}, status, headers, "")  # status and headers
    if check == "status" or not recorded["body"]:
        return out
    content_type = recorded["headers"].get("content-type", "")
    try:
        if content_type.startswith("text/event-stream"):
            want, got = _sse_blocks(recorded["body"]), _sse_blocks(body)
            if not got:
                return [*out, "empty SSE body"]
            return [
                *out,
                *_block_shape(want[0], got[0], "first event"),
                *_block_shape(want[-1], got[-1], "last event"),
            ]
        return out + diff_shape(json.loads(recorded["body"]), json.loads(body))
    except ValueError as exc:  # json.JSONDecodeError included
        return [*out, str(exc)]
