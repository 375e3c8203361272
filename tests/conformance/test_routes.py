"""Routes of a generate model beyond chat and completions, checked against the emulator and
against real vLLM 0.26.0: the Anthropic Messages API (non-streaming, streaming, count_tokens,
errors, queued while asleep), the 404s of the pooling and audio routes, which vLLM
registers only for pooling and ASR models, and the 404 of `/v1/models/{id}`, which vLLM does
not register at all."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

HANG_S = 1.5
MESSAGE = {
    "model": "tiny",
    "max_tokens": 5,
    "messages": [{"role": "user", "content": "Give me a fun fact about the Moon."}],
}
NOT_FOR_GENERATE = [
    "/pooling",
    "/classify",
    "/score",
    "/v1/score",
    "/rerank",
    "/v1/rerank",
    "/v2/rerank",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
]


def anthropic_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.strip().split("\n\n"):
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ")
        assert data_line.startswith("data: ")
        name, payload = name_line[len("event: ") :], json.loads(data_line[len("data: ") :])
        assert payload["type"] == name
        out.append((name, payload))
    return out


async def test_messages_answer(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/messages", json=MESSAGE)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "message"
    assert body["role"] == "assistant"
    assert body["model"] == "tiny"
    assert isinstance(body["id"], str)
    assert all(block["type"] == "text" for block in body["content"])
    assert body["stop_reason"] in ("end_turn", "max_tokens")
    assert set(body["usage"]) >= {"input_tokens", "output_tokens"}
    assert 0 < body["usage"]["output_tokens"] <= 5


async def test_messages_stream_events(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/messages", json={**MESSAGE, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = anthropic_events(r.text)
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert isinstance(events[0][1]["message"]["id"], str)
    assert events[-2][1]["delta"]["stop_reason"] in ("end_turn", "max_tokens")
    assert events[-2][1]["usage"]["output_tokens"] > 0
    if "content_block_delta" in names:
        last_delta = max(i for i, name in enumerate(names) if name == "content_block_delta")
        assert names.index("content_block_start") < names.index("content_block_delta")
        assert names.index("content_block_stop") > last_delta


async def test_messages_count_tokens(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/messages/count_tokens", json={k: MESSAGE[k] for k in ("model", "messages")}
    )
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["input_tokens"], int)
    assert r.json()["input_tokens"] > 0


async def test_messages_unknown_model_is_an_anthropic_404(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/messages", json={**MESSAGE, "model": "nope"})
    assert (r.status_code, r.json()) == (
        404,
        {
            "type": "error",
            "error": {"type": "NotFoundError", "message": "The model `nope` does not exist."},
        },
    )


async def test_messages_schema_error_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/messages", json={"messages": []})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "Bad Request"


async def test_messages_hang_while_asleep(client: httpx.AsyncClient) -> None:
    assert (await client.post("/sleep", params={"level": 1})).status_code == 200
    count = await client.post(
        "/v1/messages/count_tokens", json={k: MESSAGE[k] for k in ("model", "messages")}
    )
    assert count.status_code == 200, "count_tokens is front-end only"
    task = asyncio.create_task(client.post("/v1/messages", json=MESSAGE))
    done, _ = await asyncio.wait({task}, timeout=HANG_S)
    assert not done, "a sleeping vLLM 0.26 queues Messages requests"
    assert (await client.post("/wake_up")).status_code == 200
    assert (await asyncio.wait_for(task, 30)).status_code == 200


@pytest.mark.parametrize("path", NOT_FOR_GENERATE)
async def test_pooling_and_audio_routes_absent_on_a_generate_model(
    client: httpx.AsyncClient, path: str
) -> None:
    r = await client.post(path, json={"model": "tiny", "input": "x"})
    assert (r.status_code, r.json()) == (404, {"detail": "Not Found"})


@pytest.mark.parametrize("model", ["tiny", "nope"])
async def test_no_route_for_one_model(client: httpx.AsyncClient, model: str) -> None:
    """vLLM 0.26.0 registers only `GET /v1/models` (the list), no `/v1/models/{id}`."""
    r = await client.get(f"/v1/models/{model}")
    assert (r.status_code, r.json()) == (404, {"detail": "Not Found"})
