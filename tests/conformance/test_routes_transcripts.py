"""Replay the routes recorded from real vLLM 0.26.0 on an H200 by bench/gpu/record_routes.py.

Each entry names the server it went to (`dev`: the `target` fixture's dev-mode server, `pooling`,
`tools`) and how its answer is compared (`check`: exact, shape or status; see
tests/conformance/compare.py): the random weights decide the values of vectors, scores and
logprobs, and under `tool_choice: "auto"` even whether the answer is text or a call. The entries
are replayed once, in recorded order, one connection each; each is then its own test case.
Skipped while tests/conformance/data/vllm026-routes-h200.json has not been recorded.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conformance.compare import diff_response_as
from tests.conformance.target import Target, routes_transcripts_path

pytestmark = pytest.mark.process

PATH = routes_transcripts_path()
ENTRIES: list[dict[str, Any]] = json.loads(PATH.read_text()) if PATH.exists() else []
NOT_RECORDED = f"{PATH.name} not recorded yet (bench/gpu/record_routes.py on a GPU host)"


def _case_id(i: int) -> str:
    entry = ENTRIES[i]
    path = entry["req"]["path"].strip("/").replace("/", "_")
    return f"{i:02d}-{entry['server']}-{entry['req']['method']}-{path}"


@pytest.fixture(scope="session")
def routes_replay(
    target: Target, pooling_target: str, tools_target: str
) -> list[tuple[int, dict[str, str], str]]:
    """(status, headers, body) of every entry, replayed in recorded order."""
    bases = {"dev": target.url, "pooling": pooling_target, "tools": tools_target}
    results = []
    for entry in ENTRIES:
        req = entry["req"]
        kwargs: dict[str, Any] = {"json": req["json"]} if "json" in req else {}
        with httpx.Client(base_url=bases[entry["server"]], timeout=120) as client:
            r = client.request(req["method"], req["path"], **kwargs)
        results.append((r.status_code, dict(r.headers), r.text))
    return results


def test_routes_recording_is_there() -> None:
    if not ENTRIES:
        pytest.skip(NOT_RECORDED)
    assert {e["server"] for e in ENTRIES} == {"dev", "pooling", "tools"}


@pytest.mark.skipif(not ENTRIES, reason=NOT_RECORDED)
@pytest.mark.parametrize("index", range(len(ENTRIES)), ids=_case_id)
def test_routes_entry(index: int, routes_replay: list[tuple[int, dict[str, str], str]]) -> None:
    status, headers, body = routes_replay[index]
    entry = ENTRIES[index]
    differences = diff_response_as(entry["check"], entry, status, headers, body)
    assert not differences, "\n".join(differences)
