"""Start-up, fault injection, engine death and the hazards real vLLM has."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.helpers.processes import Spawn, emulator_stats, free_port

HANG_S = 1.0
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "ignore_eos": True}


def test_connection_refused_until_started(spawn: Spawn) -> None:
    port = free_port()
    emu = spawn("--emu-startup-s", "3", name="slow", port=port)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health")
    assert emu.proc.poll() is None, "still starting, not dead"
    emu.wait_listening()
    assert emu.port == port
    assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200


def test_non_integer_dev_mode_is_a_startup_error(spawn: Spawn) -> None:
    emu = spawn(name="bad", env={"VLLM_SERVER_DEV_MODE": "true"})
    assert emu.wait_exit() == 1
    assert "ValueError" in emu.log()


def test_unknown_vllm_flags_are_accepted(spawn: Spawn) -> None:
    emu = spawn(
        "--dtype",
        "bfloat16",
        "--tensor-parallel-size",
        "1",
        "--enforce-eager",
        "--no-enable-prefix-caching",
        "--some-future-flag",
        name="flags",
    )
    emu.wait_listening()
    assert httpx.get(f"{emu.url}/health").status_code == 200


async def test_engine_death_fails_requests_then_exits(spawn: Spawn) -> None:
    emu = spawn("--emu-itl-s", "0.01", name="dying")
    await asyncio.to_thread(emu.wait_listening)
    async with httpx.AsyncClient(base_url=emu.url, timeout=30) as c:
        async with c.stream(
            "POST", "/v1/chat/completions", json={**CHAT, "max_tokens": 1000, "stream": True}
        ) as r:
            lines = r.aiter_lines()
            assert (await anext(lines)).startswith("data: ")
            assert (await c.post("/_emulator/faults", json={"die": True})).status_code == 200
            rest = [line async for line in lines if line.startswith("data: ")]
        assert '"EngineCore encountered an issue.' in rest[-2]
        assert rest[-1] == "data: [DONE]"
        r2 = await c.post("/v1/chat/completions", json=CHAT)
        assert r2.status_code == 500
        assert r2.json()["error"]["message"].startswith("EngineCore encountered an issue.")
        assert (await c.get("/health")).status_code == 503
    assert await asyncio.to_thread(emu.wait_exit, 15) == 1


async def test_keep_alive_on_engine_death_keeps_the_port_open(spawn: Spawn) -> None:
    emu = spawn(name="zombie", env={"VLLM_KEEP_ALIVE_ON_ENGINE_DEATH": "1"})
    await asyncio.to_thread(emu.wait_listening)
    async with httpx.AsyncClient(base_url=emu.url, timeout=30) as c:
        await c.post("/_emulator/faults", json={"die": True})
        assert (await c.get("/health")).status_code == 503
    assert emu.proc.poll() is None


async def test_hung_wake_blocks_is_sleeping_too(spawn: Spawn) -> None:
    emu = spawn("--enable-sleep-mode", "--emu-fault", "hang_wake", name="hang")
    await asyncio.to_thread(emu.wait_listening)
    async with httpx.AsyncClient(base_url=emu.url, timeout=30) as c:
        assert (await c.post("/sleep", params={"level": 1})).status_code == 200
        wake = asyncio.create_task(c.post("/wake_up"))
        query = asyncio.create_task(c.get("/is_sleeping"))
        done, _ = await asyncio.wait({wake, query}, timeout=HANG_S)
        assert not done, "the engine-core utility queue is blocked behind the wake"
        assert (await c.get("/health")).status_code == 200  # frontend-only: still answers
        wake.cancel()
        query.cancel()


async def test_injected_wake_oom_wedges(spawn: Spawn) -> None:
    emu = spawn("--enable-sleep-mode", name="oom")
    await asyncio.to_thread(emu.wait_listening)
    async with httpx.AsyncClient(base_url=emu.url, timeout=30) as c:
        await c.post("/sleep", params={"level": 1})
        assert (await c.post("/_emulator/faults", json={"add": ["wake_oom"]})).status_code == 200
        assert (
            (await c.post("/wake_up"))
            .json()["error"]["message"]
            .endswith("out of memory at <path>:163")
        )
        await c.post("/_emulator/faults", json={"remove": ["wake_oom"]})
        assert (await c.post("/wake_up")).status_code == 500, "wedged for good"
        assert (await c.post("/_emulator/faults", json={"add": ["nonsense"]})).status_code == 400


async def test_resume_on_a_sleeping_engine_kills_it_on_the_next_request(spawn: Spawn) -> None:
    emu = spawn("--enable-sleep-mode", name="resume")
    await asyncio.to_thread(emu.wait_listening)
    async with httpx.AsyncClient(base_url=emu.url, timeout=30) as c:
        await c.post("/sleep", params={"level": 1})
        assert (await c.post("/resume")).json() == {"status": "resumed"}
        r = await c.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 500
        assert (await c.get("/health")).status_code == 503


async def test_reload_weights_while_weights_sleep_kills_the_engine(spawn: Spawn) -> None:
    emu = spawn("--enable-sleep-mode", name="reload")
    await asyncio.to_thread(emu.wait_listening)
    async with httpx.AsyncClient(base_url=emu.url, timeout=30) as c:
        await c.post("/sleep", params={"level": 2})
        r = await c.post("/collective_rpc", json={"method": "reload_weights"})
        assert r.status_code == 500
        assert (await c.get("/health")).status_code == 503


async def test_stats_count_control_calls_and_queued_requests(spawn: Spawn) -> None:
    emu = spawn("--enable-sleep-mode", name="stats")
    await asyncio.to_thread(emu.wait_listening)
    async with httpx.AsyncClient(base_url=emu.url, timeout=30) as c:
        await c.post("/sleep", params={"level": 2})
        queued = asyncio.create_task(c.post("/v1/chat/completions", json=CHAT))
        await c.post("/wake_up", params={"tags": "weights"})
        await c.post("/collective_rpc", json={"method": "reload_weights"})
        await c.post("/wake_up", params={"tags": "kv_cache"})
        assert (await queued).status_code == 200
    stats = emulator_stats(emu.url)["stats"]
    assert stats == {
        "sleeps_level_2": 1,
        "wake_calls": 2,
        "wakes_weights": 1,
        "wakes_kv_cache": 1,
        "reloads": 1,
        "requests_received": 1,
        "requests_queued_while_asleep": 1,
        "max_running": 1,
        "requests_finished_length": 1,
    }


async def test_client_disconnect_aborts_the_request(spawn: Spawn) -> None:
    emu = spawn("--emu-itl-s", "0.01", name="cancel")
    await asyncio.to_thread(emu.wait_listening)
    async with httpx.AsyncClient(base_url=emu.url, timeout=30) as c:
        async with c.stream(
            "POST", "/v1/chat/completions", json={**CHAT, "max_tokens": 1000, "stream": True}
        ) as r:
            assert (await anext(r.aiter_lines())).startswith("data: ")
        async with asyncio.timeout(10):
            while emulator_stats(emu.url)["state"]["running"]:  # type: ignore[index]
                await asyncio.sleep(0.01)
    assert emulator_stats(emu.url)["stats"]["requests_cancelled_by_client"] == 1  # type: ignore[index]


async def test_embedding_mode_serves_embeddings_only(spawn: Spawn) -> None:
    emu = spawn("--runner", "pooling", name="embed")
    await asyncio.to_thread(emu.wait_listening)
    async with httpx.AsyncClient(base_url=emu.url, timeout=30) as c:
        r = await c.post("/v1/embeddings", json={"input": ["a", "b"]})
        assert r.status_code == 200
        assert [d["index"] for d in r.json()["data"]] == [0, 1]
        assert (await c.post("/v1/chat/completions", json=CHAT)).json() == {"detail": "Not Found"}


async def test_responses_api_non_streaming_and_stream_refused(spawn: Spawn) -> None:
    emu = spawn(name="responses")
    await asyncio.to_thread(emu.wait_listening)
    async with httpx.AsyncClient(base_url=emu.url, timeout=30) as c:
        r = await c.post("/v1/responses", json={"input": "hi", "max_output_tokens": 3})
        assert r.status_code == 200
        assert r.json()["object"] == "response"
        assert r.json()["usage"]["output_tokens"] == 3
        s = await c.post("/v1/responses", json={"input": "hi", "stream": True})
        assert s.status_code == 501
        assert s.json()["error"]["type"] == "NotImplementedError"
