"""Failure is sticky, everything is bounded, and no client is ever left hanging."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.helpers.bodies import chat
from tests.helpers.fleet import Fleet, config_for
from tests.helpers.processes import free_port
from tests.helpers.proxy_server import serve_proxy

MODELS: list[dict[str, Any]] = [{"name": "model-a"}, {"name": "model-b"}]


@pytest.mark.faults
async def test_failed_wake_reaches_every_waiter_and_is_never_retried(fleet: Fleet) -> None:
    fleet.start(("model-a", []), ("model-b", []))
    httpx.post(
        f"{fleet.url('model-a')}/_emulator/faults", json={"add": ["wake_oom"]}
    ).raise_for_status()
    async with (
        serve_proxy(config_for(fleet, MODELS)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as c,
    ):
        first = await asyncio.gather(
            *(c.post("/v1/chat/completions", json=chat("model-a")) for _ in range(5))
        )
        again = await c.post("/v1/chat/completions", json=chat("model-a"))
        assert proxy.state("model-a") == "failed"
        blocked = await c.post("/v1/chat/completions", json=chat("model-b"))
    for r in [*first, again]:
        assert r.status_code == 503
        assert r.headers["retry-after"] == "5"
        assert r.json()["error"]["code"] == "backend_unavailable"
    assert "out of memory" in first[0].json()["error"]["message"]
    assert "then POST /admin/models/" in again.json()["error"]["message"]
    assert fleet.counters("model-a")["wake_calls"] == 1, "a failed instance is never woken again"
    # the failed wake may have left memory mapped: nothing else may wake on that GPU
    assert blocked.status_code == 503
    assert "blocked" in blocked.json()["error"]["message"]
    assert fleet.counters("model-b").get("wake_calls", 0) == 0


async def test_full_queue_answers_429_with_retry_after(fleet: Fleet) -> None:
    fleet.start(("model-a", ["--emu-wake-weights-l1-s", "1.5"]), ("model-b", []))
    config = config_for(fleet, MODELS, limits={"queue_size": 2})
    async with serve_proxy(config) as proxy, httpx.AsyncClient(base_url=proxy.url, timeout=30) as c:
        queued = [
            asyncio.create_task(c.post("/v1/chat/completions", json=chat("model-a")))
            for _ in range(2)
        ]
        async with asyncio.timeout(5):
            while proxy.services.switcher.waiting["model-a"] < 2:
                await asyncio.sleep(0.01)
        rejected = await c.post("/v1/chat/completions", json=chat("model-a"))
        served = await asyncio.gather(*queued)
    assert rejected.status_code == 429
    assert rejected.headers["retry-after"] == "5"
    assert rejected.json()["error"]["code"] == "queue_full"
    assert [r.status_code for r in served] == [200, 200]


async def test_wait_longer_than_the_queue_timeout_is_503(fleet: Fleet) -> None:
    fleet.start(("model-a", ["--emu-wake-weights-l1-s", "2"]), ("model-b", []))
    config = config_for(fleet, MODELS, limits={"queue_timeout_s": 0.3, "retry_after_s": 7})
    async with serve_proxy(config) as proxy, httpx.AsyncClient(base_url=proxy.url, timeout=30) as c:
        r = await c.post("/v1/chat/completions", json=chat("model-a"))
        assert r.status_code == 503
        assert r.headers["retry-after"] == "7"
        assert "not ready within 0.3s" in r.json()["error"]["message"]
        async with asyncio.timeout(10):  # the switch itself went on
            while proxy.state("model-a") != "ready":
                await asyncio.sleep(0.01)
        assert (await c.post("/v1/chat/completions", json=chat("model-a"))).status_code == 200


@pytest.mark.faults
async def test_hung_sleep_times_out_and_fails_the_victim(fleet: Fleet) -> None:
    fleet.start(("model-a", []), ("model-b", ["--emu-fault", "hang_sleep"]))
    models: list[dict[str, Any]] = [
        {"name": "model-a"},
        {"name": "model-b", "timeouts": {"sleep_s": 0.5, "control_s": 0.3}},
    ]
    async with (
        serve_proxy(config_for(fleet, models)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as c,
    ):
        r = await c.post("/v1/chat/completions", json=chat("model-a"))
        assert r.status_code == 503
        assert "timed out after 0.5s" in r.json()["error"]["message"]
        assert proxy.state("model-b") == "failed"
        assert proxy.state("model-a") == "asleep"
    assert fleet.counters("model-a").get("wake_calls", 0) == 0, (
        "never wake next to a backend in doubt"
    )


@pytest.mark.parametrize("same_gpu", [False, True], ids=["other-gpu", "same-gpu"])
async def test_backend_that_never_comes_up_fails_and_blocks_only_its_gpu(
    fleet: Fleet, same_gpu: bool
) -> None:
    """A vLLM that is still loading already holds GPU memory: after start_s it is FAILED and
    nothing else may wake on its GPU; other GPU groups are unaffected."""
    fleet.start(("model-a", []), ("model-b", []))
    unreachable = {
        "name": "model-c",
        "url": f"http://127.0.0.1:{free_port()}",
        "gpu": "g0" if same_gpu else "g1",
        "timeouts": {"start_s": 0.3},
    }
    gpus = [{"name": "g0"}, {"name": "g1"}]
    async with (
        serve_proxy(config_for(fleet, [*MODELS, unreachable], gpus=gpus)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as c,
    ):
        assert proxy.state("model-c") == "failed"
        dead = await c.post("/v1/chat/completions", json=chat("model-c"))
        other = await c.post("/v1/chat/completions", json=chat("model-a"))
    assert dead.status_code == 503
    assert "not reachable" in dead.json()["error"]["message"]
    if same_gpu:
        assert other.status_code == 503
        assert "model-c failed and may still hold GPU memory" in other.json()["error"]["message"]
    else:
        assert other.status_code == 200


async def test_failed_warm_up_puts_the_model_back_to_sleep(fleet: Fleet) -> None:
    fleet.start(("model-a", []), ("model-b", []))
    models: list[dict[str, Any]] = [
        {"name": "model-a", "warmup": {"endpoint": "embeddings"}},
        {"name": "model-b"},
    ]
    async with (
        serve_proxy(config_for(fleet, models)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as c,
    ):
        r = await c.post("/v1/chat/completions", json=chat("model-a"))
        assert r.status_code == 503
        assert "warm-up failed" in r.json()["error"]["message"]
        assert proxy.state("model-a") == "failed"
        back = await c.post("/v1/chat/completions", json=chat("model-b"))
    assert back.status_code == 200, "memory was released, so the group is not blocked"
    assert httpx.get(f"{fleet.url('model-a')}/is_sleeping").json() == {"is_sleeping": True}
