"""Sleep-mode behaviour a proxy relies on, checked against the emulator and against real vLLM.

Each test starts and ends with the dev target awake (the `client` fixture). Waits for
something that must NOT happen (a response from a sleeping engine) are bounded by HANG_S and
asserted as absence; everything else waits on the event itself.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest

from tests.conformance.target import API_KEY, Target

HANG_S = 1.5
LONG = 400  # tokens: ~1 s of decoding on an H100 for a 0.6B model, and in the emulator


def chat(
    max_tokens: int, *, stream: bool = False, content: str = "Give me a fun fact about the Moon."
) -> dict[str, Any]:
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }


async def sleep(c: httpx.AsyncClient, level: int, mode: str | None = None) -> None:
    params: dict[str, Any] = {"level": level} if mode is None else {"level": level, "mode": mode}
    r = await c.post("/sleep", params=params)
    assert (r.status_code, r.text) == (200, "")


async def is_sleeping(c: httpx.AsyncClient) -> bool:
    body: dict[str, bool] = (await c.get("/is_sleeping")).json()
    return body["is_sleeping"]


async def sleep_state(c: httpx.AsyncClient) -> dict[str, float]:
    text = (await c.get("/metrics")).text
    found = re.findall(
        r'^vllm:engine_sleep_state\{[^}]*sleep_state="(\w+)"[^}]*\} (\S+)$', text, re.M
    )
    return {state: float(v) for state, v in found}


async def greedy(c: httpx.AsyncClient) -> str:
    r = await c.post("/v1/chat/completions", json={**chat(12), "ignore_eos": False})
    assert r.status_code == 200, r.text
    content: str = r.json()["choices"][0]["message"]["content"]
    return content


async def still_pending(task: asyncio.Task[Any]) -> bool:
    done, _ = await asyncio.wait({task}, timeout=HANG_S)
    return not done


async def read_events(response: httpx.Response) -> list[str]:
    return [
        line[len("data: ") :] async for line in response.aiter_lines() if line.startswith("data: ")
    ]


def finish_reasons(events: list[str]) -> list[str]:
    reasons = []
    for e in events:
        if e != "[DONE]":
            reasons += [
                ch["finish_reason"] for ch in json.loads(e)["choices"] if ch.get("finish_reason")
            ]
    return reasons


async def test_is_sleeping_follows_sleep_and_wake(client: httpx.AsyncClient) -> None:
    assert not await is_sleeping(client)
    await sleep(client, 1)
    assert await is_sleeping(client)
    assert (await client.post("/wake_up")).status_code == 200
    assert not await is_sleeping(client)


async def test_request_to_sleeping_engine_hangs_until_wake(client: httpx.AsyncClient) -> None:
    await sleep(client, 1)
    task = asyncio.create_task(client.post("/v1/chat/completions", json=chat(4)))
    assert await still_pending(task), (
        "a sleeping vLLM 0.26 queues requests; it does not answer them"
    )
    assert (await client.post("/wake_up")).status_code == 200
    r = await asyncio.wait_for(task, 30)
    assert r.status_code == 200
    assert r.json()["choices"][0]["finish_reason"] == "length"


async def test_stream_to_sleeping_engine_sends_headers_then_silence(
    client: httpx.AsyncClient,
) -> None:
    await sleep(client, 1)
    async with client.stream("POST", "/v1/chat/completions", json=chat(3, stream=True)) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
        lines = r.aiter_lines()

        async def first_line() -> str:
            return await anext(lines)

        first = asyncio.create_task(first_line())
        assert await still_pending(first), "no SSE data may arrive while asleep"
        assert (await client.post("/wake_up")).status_code == 200
        assert (await asyncio.wait_for(first, 30)).startswith("data: ")
        rest = [line async for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"


async def test_frontend_answers_while_asleep(client: httpx.AsyncClient) -> None:
    await sleep(client, 1)
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/v1/models")).status_code == 200
    assert (
        await client.post("/tokenize", json={"model": "tiny", "prompt": "x"})
    ).status_code == 200
    r = await client.post("/v1/chat/completions", json={**chat(2), "model": "nope"})
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "NotFoundError"


async def test_sleep_default_mode_aborts_inflight_stream(client: httpx.AsyncClient) -> None:
    async with client.stream("POST", "/v1/chat/completions", json=chat(LONG, stream=True)) as r:
        lines = r.aiter_lines()
        assert (await anext(lines)).startswith("data: ")  # the request is running
        await sleep(client, 1)  # mode defaults to abort
        events = [line[6:] async for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert finish_reasons(events) == ["abort"]


async def test_sleep_abort_returns_partial_nonstream_response(client: httpx.AsyncClient) -> None:
    task = asyncio.create_task(client.post("/v1/chat/completions", json=chat(LONG)))
    async with asyncio.timeout(30):
        while (await client.get("/metrics")).text.count(
            'vllm:num_requests_running{engine="0",model_name="tiny"} 1.0'
        ) == 0:
            await asyncio.sleep(0.01)  # poll for the engine to have admitted the request
    await sleep(client, 1, "abort")
    r = await asyncio.wait_for(task, 30)
    assert r.status_code == 200
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "abort"
    assert r.json()["usage"]["completion_tokens"] < LONG


async def test_sleep_wait_drains_inflight_request_first(client: httpx.AsyncClient) -> None:
    async with client.stream("POST", "/v1/chat/completions", json=chat(LONG, stream=True)) as r:
        lines = r.aiter_lines()
        assert (await anext(lines)).startswith("data: ")
        sleeping = asyncio.create_task(sleep(client, 1, "wait"))
        events = [line[6:] async for line in lines if line.startswith("data: ")]
        await asyncio.wait_for(sleeping, 30)
    assert finish_reasons(events) == ["length"]
    assert await is_sleeping(client)


async def test_sleep_keep_freezes_and_resumes_inflight_stream(client: httpx.AsyncClient) -> None:
    body = {**chat(LONG, stream=True), "stream_options": {"include_usage": True}}
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = r.aiter_lines()
        assert (await anext(lines)).startswith("data: ")
        await sleep(client, 1, "keep")
        assert (await client.post("/wake_up")).status_code == 200
        events = [line[6:] async for line in lines if line.startswith("data: ")]
    assert finish_reasons(events) == ["length"]
    assert events[-1] == "[DONE]"
    final = json.loads(events[-2])
    assert final["choices"] == []
    # The stream resumed to its full length: the engine's count, not the chunks'. On the H200
    # the random-weight model sampled tokens that decode to "" (the detokenizer holds back a
    # partial UTF-8 sequence), so 398 of 400 tokens had a non-empty content chunk.
    assert final["usage"]["completion_tokens"] == LONG
    chunks = [json.loads(e)["choices"] for e in events[:-2]]
    assert sum(1 for c in chunks if c and c[0]["delta"].get("content")) <= LONG


async def test_partial_wake_keeps_queued_request_waiting(client: httpx.AsyncClient) -> None:
    await sleep(client, 1)
    task = asyncio.create_task(client.post("/v1/chat/completions", json=chat(4)))
    assert (await client.post("/wake_up", params={"tags": "weights"})).status_code == 200
    assert await is_sleeping(client)
    assert await still_pending(task), "scheduling resumes only once every tag is awake"
    assert (await client.post("/wake_up", params={"tags": "kv_cache"})).status_code == 200
    assert (await asyncio.wait_for(task, 30)).status_code == 200
    assert not await is_sleeping(client)


async def test_level2_staged_wake_restores_output(client: httpx.AsyncClient) -> None:
    before = await greedy(client)
    await sleep(client, 2)
    assert (await client.post("/wake_up", params={"tags": "weights"})).status_code == 200
    r = await client.post("/collective_rpc", json={"method": "reload_weights"})
    assert (r.status_code, r.json()) == (200, {"results": [None]})
    assert (await client.post("/wake_up", params={"tags": "kv_cache"})).status_code == 200
    assert not await is_sleeping(client)
    assert await greedy(client) == before


async def test_level2_bare_wake_serves_without_error_but_wrong_text(
    client: httpx.AsyncClient,
) -> None:
    before = await greedy(client)
    await sleep(client, 2)
    assert (await client.post("/wake_up")).status_code == 200
    assert not await is_sleeping(client)
    after = await greedy(client)  # 200, no warning: the trap
    assert after != before


async def test_level0_pauses_and_wake_resumes(client: httpx.AsyncClient) -> None:
    await sleep(client, 0)
    assert (await client.get("/is_paused")).json() == {"is_paused": True}
    assert await is_sleeping(client)
    task = asyncio.create_task(client.post("/v1/chat/completions", json=chat(2)))
    assert await still_pending(task)
    assert (await client.post("/wake_up")).status_code == 200
    assert (await asyncio.wait_for(task, 30)).status_code == 200
    assert (await client.get("/is_paused")).json() == {"is_paused": False}


@pytest.mark.parametrize(
    ("params", "body"),
    [({"sleep_level": "2"}, None), ({}, {"level": 2})],
    ids=["sleep_level-query-ignored", "json-body-ignored"],
)
async def test_sleep_level_comes_only_from_the_level_query(
    client: httpx.AsyncClient, params: dict[str, str], body: Any
) -> None:
    r = await client.post("/sleep", params=params, json=body)
    assert r.status_code == 200
    assert await sleep_state(client) == {"awake": 0.0, "weights_offloaded": 1.0, "discard_all": 0.0}


async def test_sleep_state_gauge_tracks_levels_and_partial_wake_quirk(
    client: httpx.AsyncClient,
) -> None:
    assert await sleep_state(client) == {"awake": 1.0, "weights_offloaded": 0.0, "discard_all": 0.0}
    await sleep(client, 2)
    assert await sleep_state(client) == {"awake": 0.0, "weights_offloaded": 0.0, "discard_all": 1.0}
    assert (await client.post("/wake_up", params={"tags": "weights"})).status_code == 200
    assert await sleep_state(client) == {"awake": 1.0, "weights_offloaded": 0.0, "discard_all": 0.0}
    assert await is_sleeping(client), (
        "the gauge says awake after a partial wake; /is_sleeping does not"
    )


async def test_request_metrics_exist(client: httpx.AsyncClient) -> None:
    await greedy(client)
    text = (await client.get("/metrics")).text
    for name in (
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:request_queue_time_seconds_bucket",
        "vllm:request_success_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
    ):
        assert re.search(rf"^{re.escape(name)}\{{", text, re.M), f"{name} missing from /metrics"


async def test_reset_prefix_cache_when_idle(client: httpx.AsyncClient) -> None:
    r = await client.post("/reset_prefix_cache")
    assert (r.status_code, r.json()) == (200, {"success": True})


async def test_api_key_guards_only_v1_paths(target: Target) -> None:
    async with httpx.AsyncClient(base_url=target.nodev_url, timeout=30) as c:
        r = await c.get("/v1/models")
        assert (r.status_code, r.json()) == (401, {"error": "Unauthorized"})
        assert (
            await c.get("/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
        ).status_code == 200
        assert (await c.get("/health")).status_code == 200
        assert (await c.post("/tokenize", json={"prompt": "x"})).status_code == 200
        assert (await c.get("/metrics")).status_code == 200


async def test_failed_engine_call_closes_the_connection(target: Target) -> None:
    """A `Call to ... method failed` 500 is followed by the server closing the connection.

    vLLM's catch-all handler re-raises after answering, so uvicorn drops the keep-alive
    connection; a proxy must not reuse a control connection after such a 500.
    """
    host, port = target.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"POST /sleep?level=1&mode=bogus HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n".encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert head.startswith(b"HTTP/1.1 500")
        length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
        body = json.loads(await reader.readexactly(length))
        assert body["error"]["message"] == "Call to sleep method failed: Invalid pause mode: bogus"
        assert await asyncio.wait_for(reader.read(), 10) == b"", (
            "the server must close the connection"
        )
    finally:
        writer.close()


def generated_tokens(metrics: str) -> float:
    found = re.findall(r"^vllm:generation_tokens_total\{[^}]*\} (\S+)$", metrics, re.M)
    return sum(float(v) for v in found)


async def test_a_streaming_client_that_leaves_aborts_its_request(client: httpx.AsyncClient) -> None:
    """What the proxy's revoke (max_hold_s) and a client's disconnect rely on: closing the
    connection of a stream ends the engine's work on it, long before its max_tokens."""
    before = generated_tokens((await client.get("/metrics")).text)
    async with client.stream("POST", "/v1/chat/completions", json=chat(LONG, stream=True)) as r:
        lines = r.aiter_lines()
        while not (await anext(lines)).startswith("data: "):
            pass  # until the first token event; leaving the block closes the connection
    async with asyncio.timeout(30):
        while (
            'num_requests_running{engine="0",model_name="tiny"} 0.0'
            not in (await client.get("/metrics")).text
        ):
            await asyncio.sleep(0.01)  # poll until the engine let go of it
    generated = generated_tokens((await client.get("/metrics")).text) - before
    assert generated < LONG / 2, f"{generated:g} of {LONG} tokens generated after the client left"
