"""Replay the 57 request/response pairs recorded from real vLLM 0.26.0 on an H100.

The pairs form one sequence (sleep, partial wakes, level-2 staged wake, ...), so they are
replayed once, in order, against the target; each pair is then its own test case. The last four
were recorded on a server without VLLM_SERVER_DEV_MODE and replay against the no-dev target.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conformance.compare import diff_response
from tests.conformance.target import Target, transcripts_path

TRANSCRIPTS: list[dict[str, Any]] = json.loads(transcripts_path().read_text())
NODEV_FROM = 53  # entries recorded without dev mode


def _case_id(i: int) -> str:
    req = TRANSCRIPTS[i]["req"]
    return f"{i:02d}-{req['method']}-{req['path'].strip('/').replace('/', '_').replace('?', '-')}"


@pytest.fixture(scope="session")
def replay(target: Target) -> list[tuple[int, dict[str, str], str]]:
    """(status, headers, body) of every entry, replayed in recorded order."""
    if httpx.get(f"{target.url}/is_sleeping").json()["is_sleeping"]:
        pytest.fail("the dev target must start awake for the transcript replay")
    results = []
    for i, entry in enumerate(TRANSCRIPTS):
        req = entry["req"]
        kwargs: dict[str, Any] = {}
        if "json" in req:
            kwargs["json"] = req["json"]
        if "data" in req:
            kwargs["content"] = req["data"].encode()
        if "headers" in req:
            kwargs["headers"] = req["headers"]
        # one connection per request, as recorded: vLLM closes a connection after some 500s
        base = target.nodev_url if i >= NODEV_FROM else target.url
        with httpx.Client(base_url=base, timeout=60) as client:
            r = client.request(req["method"], req["path"], **kwargs)
        results.append((r.status_code, dict(r.headers), r.text))
    # leave the shared dev target awake for the tests that follow
    if httpx.get(f"{target.url}/is_sleeping").json()["is_sleeping"]:
        httpx.post(f"{target.url}/wake_up")
    return results


@pytest.mark.parametrize("index", range(len(TRANSCRIPTS)), ids=_case_id)
def test_transcript_entry(index: int, replay: list[tuple[int, dict[str, str], str]]) -> None:
    status, headers, body = replay[index]
    differences = diff_response(TRANSCRIPTS[index], status, headers, body)
    assert not differences, "\n".join(differences)


def test_staged_level2_wake_restores_greedy_output(
    replay: list[tuple[int, dict[str, str], str]],
) -> None:
    """Entry 52 (after sleep level 2 + staged wake) must say what entry 7 said before it."""
    before = json.loads(replay[7][2])["choices"][0]["message"]["content"]
    after = json.loads(replay[52][2])["choices"][0]["message"]["content"]
    assert before == after
