"""Progress during a long switch: a streaming request that waits past `progress_after_s` gets
its head and SSE comments (or reasoning chunks) at once and every `progress_every_s`, then the
model's stream; the OpenAI SDK reads the same answer it would have read without them; a failure
after the head is an SSE error event + [DONE]; quick switches and non-streamed requests are
unchanged. The wake of model-a (asleep; model-b awake) is slowed to 1.5 s in its emulator.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai

from proxy.http.progress import _HeadSent
from tests.helpers.bodies import chat
from tests.helpers.fleet import Fleet, config_for
from tests.helpers.proxy_server import RunningProxy, serve_proxy

SLOW_WAKE = ["--emu-wake-weights-l1-s", "1.5"]
LIMITS = {"progress_after_s": 0.3, "progress_every_s": 0.4}


@asynccontextmanager
async def slow_switch(
    fleet: Fleet, progress: str = "comments", wake: list[str] | None = None
) -> AsyncIterator[tuple[RunningProxy, httpx.AsyncClient]]:
    fleet.start(("model-a", wake if wake is not None else SLOW_WAKE), ("model-b", []))
    models: list[dict[str, Any]] = [{"name": "model-a", "progress": progress}, {"name": "model-b"}]
    async with (
        serve_proxy(config_for(fleet, models, limits=LIMITS)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as client,
    ):
        assert proxy.state("model-a") == "asleep"
        yield proxy, client


async def test_a_long_wake_sends_the_head_and_comments_then_the_stream(fleet: Fleet) -> None:
    async with slow_switch(fleet) as (_, client):
        t0 = time.monotonic()
        body = chat("model-a", max_tokens=5, stream=True)
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            head_s = time.monotonic() - t0
            assert r.status_code == 200
            assert r.headers["x-vllm-switch-progress"] == "comments"
            assert r.headers["x-accel-buffering"] == "no", "nginx must not hold the comments"
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = [line async for line in r.aiter_lines() if line]
    assert head_s < 1.0, "the head comes long before the 1.5 s wake ends"
    comments = [line for line in lines if line.startswith(":")]
    assert len(comments) >= 3, lines  # at 0.3 s, then every 0.4 s of the 1.5 s wake
    assert comments[0].startswith(": vllm-switch: waiting for model model-a (")
    data = [line for line in lines if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert lines.index(comments[-1]) < lines.index(data[0]), "progress only before the answer"


async def test_the_openai_sdk_reads_the_same_stream_through_the_comments(fleet: Fleet) -> None:
    async with slow_switch(fleet) as (proxy, _):
        sdk = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="none")
        stream = await sdk.chat.completions.create(
            model="model-a",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=6,
            stream=True,
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await sdk.close()
    assert text, "content arrived after the progress comments"


async def test_langchain_streams_through_the_comments(fleet: Fleet) -> None:
    from langchain_openai import ChatOpenAI

    async with slow_switch(fleet) as (proxy, _), httpx.AsyncClient(timeout=30) as http:
        llm = ChatOpenAI(
            model="model-a",
            base_url=f"{proxy.url}/v1",
            api_key="none",
            max_tokens=6,
            http_async_client=http,
        )
        parts = [chunk.content async for chunk in llm.astream("hi")]
    assert "".join(str(p) for p in parts), "LangChain got the answer after the comments"


async def test_reasoning_progress_is_a_chunk_that_chat_uis_show(fleet: Fleet) -> None:
    async with slow_switch(fleet, progress="reasoning") as (proxy, _):
        sdk = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="none")
        stream = await sdk.chat.completions.create(
            model="model-a",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=6,
            stream=True,
        )
        chunks = [c async for c in stream]
        await sdk.close()
    extras = [(c.choices[0].delta.model_extra or {}) for c in chunks if c.choices]
    thinking = [e["reasoning_content"] for e in extras if "reasoning_content" in e]
    assert thinking, "the SDK surfaces the progress as reasoning_content"
    assert thinking[0].startswith("[vllm-switch] waiting for model model-a")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def test_a_failed_wake_after_the_head_ends_the_stream_with_an_error_event(
    fleet: Fleet,
) -> None:
    slow_oom = [*SLOW_WAKE, "--emu-fault", "wake_oom", "--emu-oom-s", "1.0"]
    async with slow_switch(fleet, wake=slow_oom) as (_, client):
        body = chat("model-a", stream=True)
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            lines = [line async for line in r.aiter_lines() if line]
        after = await client.post("/v1/chat/completions", json=chat("model-b"))
    assert lines[0].startswith(": vllm-switch: waiting")
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2][6:])["error"]
    assert error["code"] == "backend_unavailable"
    assert after.status_code == 503, "a wedged engine may hold memory: its GPU is blocked"
    assert "is blocked" in after.json()["error"]["message"]


async def test_a_quick_switch_and_a_non_streamed_request_are_unchanged(fleet: Fleet) -> None:
    async with slow_switch(fleet, wake=[]) as (_, client):
        body = chat("model-a", stream=True)
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert "x-vllm-switch-progress" not in r.headers
            assert float(r.headers["x-vllm-switch-wake-ms"]) > 0, "it switched, quickly"
            lines = [line async for line in r.aiter_lines() if line]
        assert not any(line.startswith(":") for line in lines)
        plain = await client.post("/v1/chat/completions", json=chat("model-b"))
    assert plain.status_code == 200
    assert "x-vllm-switch-progress" not in plain.headers


async def test_progress_off_waits_silently(fleet: Fleet) -> None:
    async with slow_switch(fleet, progress="off") as (_, client):
        t0 = time.monotonic()
        body = chat("model-a", stream=True)
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            head_s = time.monotonic() - t0
            lines = [line async for line in r.aiter_lines() if line]
    assert head_s >= 1.5, "the head waits for the wake"
    assert not any(line.startswith(":") for line in lines)


async def test_a_client_that_leaves_during_the_progress_leaves_the_queue(fleet: Fleet) -> None:
    async with slow_switch(fleet) as (proxy, client):
        body = chat("model-a", stream=True)
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            first = await anext(r.aiter_lines())
            assert first.startswith(": vllm-switch")
        # the client closed its connection mid-wait: the switch still completes, and nothing
        # holds a lease or a place in the queue afterwards
        backend = proxy.services.backends["model-a"]
        async with asyncio.timeout(10):
            while backend.state.value != "ready" or proxy.services.switcher.waiting["model-a"]:
                await asyncio.sleep(0.02)  # polling a condition, bounded
        assert backend.leases == 0
        ok = await client.post("/v1/chat/completions", json=chat("model-a"))
    assert ok.status_code == 200


async def _through_head_sent(status: int, kind: bytes, *bodies: bytes) -> list[Any]:
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    head_sent = _HeadSent(send)
    await head_sent(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", kind)]}
    )
    for i, body in enumerate(bodies):
        more = i < len(bodies) - 1
        await head_sent({"type": "http.response.body", "body": body, "more_body": more})
    return sent


async def test_after_the_head_a_stream_passes_and_anything_else_becomes_one_event() -> None:
    """The backend's own head is dropped (ours is out); its SSE body passes chunk by chunk; a
    JSON answer where a stream was asked for, or an error answer, becomes one event + [DONE]."""
    sse = await _through_head_sent(200, b"text/event-stream", b"data: 1\n\n", b"data: [DONE]\n\n")
    assert [m["body"] for m in sse] == [b"data: 1\n\n", b"data: [DONE]\n\n"]
    plain = await _through_head_sent(200, b"application/json", b'{"id":', b'"x"}')
    assert [m["body"] for m in plain] == [b'data: {"id": "x"}\n\ndata: [DONE]\n\n']
    error = b'{"error": {"message": "bad", "type": "BadRequestError", "code": 400}}'
    failed = await _through_head_sent(400, b"application/json", error)
    assert json.loads(failed[0]["body"].split(b"\n")[0][6:])["error"]["message"] == "bad"
    assert failed[0]["body"].endswith(b"data: [DONE]\n\n")
    garbage = await _through_head_sent(502, b"text/html", b"<html>" * 100_000)
    assert b"the backend answered 502" in garbage[0]["body"]
    assert len(garbage[0]["body"]) < 2000, "held and cut, not buffered whole"
