"""Routes by model kind: Anthropic Messages on generate models, pooling routes on pooling ones,
and what each kind answers on the other's routes; engine routes hang while the engine sleeps."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.helpers.processes import EmulatorProcess, Spawn, emulator_stats

HANG_S = 1.0
MESSAGE = {"model": "emu", "max_tokens": 6, "messages": [{"role": "user", "content": "hi"}]}
POOLING_ONLY = [
    "/pooling",
    "/classify",
    "/score",
    "/v1/score",
    "/rerank",
    "/v1/rerank",
    "/v2/rerank",
]


def started(spawn: Spawn, *args: str) -> EmulatorProcess:
    emu = spawn(*args)
    emu.wait_listening()
    return emu


def anthropic_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.strip().split("\n\n"):
        name, data = block.split("\n")
        assert name.startswith("event: ")
        assert data.startswith("data: ")
        payload = json.loads(data[6:])
        assert payload["type"] == name[7:]
        out.append((name[7:], payload))
    return out


def test_messages_non_streaming(spawn: Spawn) -> None:
    emu = started(spawn)
    r = httpx.post(f"{emu.url}/v1/messages", json=MESSAGE)
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body) == ["id", "type", "role", "content", "model", "stop_reason", "usage"]
    assert body["content"][0]["type"] == "text"
    assert body["stop_reason"] in ("end_turn", "max_tokens")
    assert body["usage"]["output_tokens"] <= 6


def test_messages_stream_event_sequence(spawn: Spawn) -> None:
    emu = started(spawn)
    r = httpx.post(f"{emu.url}/v1/messages", json={**MESSAGE, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = anthropic_events(r.text)
    names = [n for n, _ in events]
    assert names[:2] == ["message_start", "content_block_start"]
    assert set(names[2:-3]) == {"content_block_delta"}
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    text = "".join(p["delta"]["text"] for n, p in events if n == "content_block_delta")
    assert text
    deltas = names.count("content_block_delta")
    eos = events[-2][1]["delta"]["stop_reason"] == "end_turn"  # the EOS step counts as a token
    assert events[-2][1]["usage"]["output_tokens"] == deltas + eos


def test_messages_tools(spawn: Spawn) -> None:
    tool = {
        "name": "lookup",
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
    }
    plain = started(spawn)
    r = httpx.post(f"{plain.url}/v1/messages", json={**MESSAGE, "max_tokens": 64, "tools": [tool]})
    assert r.status_code == 400
    assert r.json()["type"] == "error"
    assert "--enable-auto-tool-choice" in r.json()["error"]["message"]
    flags = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")
    emu = started(spawn, *flags, "--emu-gpu", "another-gpu")
    r = httpx.post(f"{emu.url}/v1/messages", json={**MESSAGE, "max_tokens": 64, "tools": [tool]})
    body = r.json()
    assert body["stop_reason"] == "tool_use"
    (block,) = body["content"]
    assert block["type"] == "tool_use"
    assert block["name"] == "lookup"
    assert isinstance(block["input"]["q"], str)


def test_messages_errors(spawn: Spawn) -> None:
    emu = started(spawn)
    r = httpx.post(f"{emu.url}/v1/messages", json={**MESSAGE, "model": "nope"})
    assert (r.status_code, r.json()) == (
        404,
        {
            "type": "error",
            "error": {"type": "NotFoundError", "message": "The model `nope` does not exist."},
        },
    )
    missing = httpx.post(f"{emu.url}/v1/messages", json={"messages": []})
    assert missing.status_code == 400
    assert missing.json()["error"]["type"] == "Bad Request"


async def test_messages_hang_while_asleep_but_count_tokens_answers(spawn: Spawn) -> None:
    emu = started(spawn, "--enable-sleep-mode")
    async with httpx.AsyncClient(base_url=emu.url, timeout=30) as c:
        assert (await c.post("/sleep", params={"level": 1})).status_code == 200
        count = await c.post(
            "/v1/messages/count_tokens", json={k: MESSAGE[k] for k in ("model", "messages")}
        )
        assert count.status_code == 200
        assert count.json()["input_tokens"] > 0
        task = asyncio.create_task(c.post("/v1/messages", json=MESSAGE))
        done, _ = await asyncio.wait({task}, timeout=HANG_S)
        assert not done, "a sleeping engine queues Messages requests"
        stats = emulator_stats(emu.url)["stats"]
        assert stats["requests_queued_while_asleep"] == 1  # type: ignore[index]
        assert (await c.post("/wake_up")).status_code == 200
        assert (await asyncio.wait_for(task, 30)).status_code == 200


@pytest.mark.parametrize(
    "path", [*POOLING_ONLY, "/v1/embeddings", "/v1/audio/transcriptions", "/v1/audio/translations"]
)
def test_generate_model_lacks_pooling_and_audio_routes(spawn: Spawn, path: str) -> None:
    emu = started(spawn)
    r = httpx.post(f"{emu.url}{path}", json={"model": "emu", "input": "x"})
    assert (r.status_code, r.json()) == (404, {"detail": "Not Found"})


def test_embed_model_routes(spawn: Spawn) -> None:
    emu = started(spawn, "--convert", "embed")
    url = emu.url
    pooled = httpx.post(f"{url}/pooling", json={"input": ["a b", "c"]}).json()
    assert [d["object"] for d in pooled["data"]] == ["pooling", "pooling"]
    assert all(isinstance(x, float) for x in pooled["data"][0]["data"])
    for path in ("/score", "/v1/score"):
        score = httpx.post(f"{url}{path}", json={"text_1": "q", "text_2": ["q", "other"]}).json()
        assert [d["index"] for d in score["data"]] == [0, 1]
        assert score["data"][0]["score"] == pytest.approx(1.0)  # identical texts
        assert score["data"][1]["score"] < 1.0
    docs = ["far", "q", "other"]
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        r = httpx.post(f"{url}{path}", json={"query": "q", "documents": docs, "top_n": 2}).json()
        assert len(r["results"]) == 2
        assert r["results"][0]["index"] == 1
        assert r["results"][0]["document"]["text"] == "q"
        assert r["results"][0]["relevance_score"] >= r["results"][1]["relevance_score"]
    for path in ("/classify", "/v1/messages", "/v1/chat/completions"):
        assert httpx.post(f"{url}{path}", json={"input": "x"}).status_code == 404


def test_classify_model_routes(spawn: Spawn) -> None:
    emu = started(spawn, "--convert", "classify")
    body = httpx.post(f"{emu.url}/classify", json={"input": ["a", "b"]}).json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    for item in body["data"]:
        assert item["num_classes"] == len(item["probs"]) == 2
        assert sum(item["probs"]) == pytest.approx(1.0)
        assert item["label"] == f"LABEL_{item['probs'].index(max(item['probs']))}"
    assert httpx.post(f"{emu.url}/pooling", json={"input": "a"}).status_code == 200
    for path in ("/v1/embeddings", "/score", "/rerank"):
        assert httpx.post(f"{emu.url}{path}", json={"input": "x"}).status_code == 404


async def test_pooling_routes_hang_while_asleep(spawn: Spawn) -> None:
    emu = started(spawn, "--convert", "embed", "--enable-sleep-mode")
    async with httpx.AsyncClient(base_url=emu.url, timeout=30) as c:
        assert (await c.post("/sleep", params={"level": 1})).status_code == 200
        task = asyncio.create_task(c.post("/rerank", json={"query": "q", "documents": ["a"]}))
        done, _ = await asyncio.wait({task}, timeout=HANG_S)
        assert not done, "a sleeping engine queues pooling requests"
        stats = emulator_stats(emu.url)["stats"]
        assert stats["requests_queued_while_asleep"] == 2  # type: ignore[index]  # query + document
        assert (await c.post("/wake_up")).status_code == 200
        assert (await asyncio.wait_for(task, 30)).status_code == 200


def test_models_carry_max_model_len(spawn: Spawn) -> None:
    emu = started(spawn, "--max-model-len", "1k")
    (card,) = httpx.get(f"{emu.url}/v1/models").json()["data"]
    assert card["max_model_len"] == 1024


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
@pytest.mark.parametrize(
    "message", [{"role": "user", "content": -504}, {"role": "robot", "content": "hi"}, {}]
)
def test_a_malformed_message_is_a_400_not_a_crash(
    spawn: Spawn, path: str, message: dict[str, Any]
) -> None:
    """Found by the proxy's fuzz: an integer content crashed count_tokens with a 500."""
    emu = started(spawn)
    r = httpx.post(f"{emu.url}{path}", json={**MESSAGE, "messages": [message]})
    assert r.status_code == 400, r.text
