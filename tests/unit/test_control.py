"""VllmControl against FakeVllm: the exact calls, parameters and failures of vLLM's control API
(and the fake's own fidelity where the proxy's safety depends on it)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest

from proxy.backends.control import ControlError, VllmControl
from proxy.config import ModelConfig
from tests.unit.fake_vllm import OOM, FakeServer, FakeVllm
from tests.unit.rig import until

pytestmark = pytest.mark.looptime
URL = "http://127.0.0.1:8001"


def model(**extra: Any) -> ModelConfig:
    return ModelConfig.model_validate({"name": "m", "url": URL, **extra})


async def control(
    *, asleep: bool = False, level: int = 1, up: bool = True, **extra: Any
) -> tuple[VllmControl, FakeServer, httpx.AsyncClient]:
    vllm = FakeVllm()
    cfg = model(sleep_level=level, **extra)
    server = vllm.add("m", URL, served_name=cfg.backend_model, asleep=asleep, level=level, up=up)
    client = httpx.AsyncClient(transport=vllm.transport)
    return VllmControl(cfg, client), server, client


@pytest.mark.parametrize("level", [1, 2])
async def test_sleep_always_passes_level_and_mode_wait(level: int) -> None:
    ctl, server, client = await control(level=level)
    async with client:
        await ctl.sleep(level)
        assert await ctl.is_sleeping() is True
    assert server.log() == [f"POST /sleep?level={level}&mode=wait", "GET /is_sleeping"]
    assert server.stats[f"sleeps_level_{level}"] == 1


async def test_level1_wake_is_one_call() -> None:
    ctl, server, client = await control(asleep=True)
    async with client:
        await ctl.wake(1)
        assert await ctl.is_sleeping() is False
    assert server.log() == ["POST /wake_up", "GET /is_sleeping"]


async def test_level2_wake_is_staged_weights_reload_kv_cache_prefix_cache() -> None:
    ctl, server, client = await control(asleep=True, level=2)
    async with client:
        await ctl.wake(2)
        assert await ctl.is_sleeping() is False
    assert server.log() == [
        "POST /wake_up?tags=weights",
        "POST /collective_rpc reload_weights",
        "POST /wake_up?tags=kv_cache",
        "POST /reset_prefix_cache",
        "GET /is_sleeping",
    ]
    assert server.weights_valid
    assert not server.dead


async def test_every_call_closes_its_connection_and_carries_the_api_key() -> None:
    ctl, server, client = await control(api_key="sk-backend-123")
    async with client:
        assert await ctl.health()
        assert await ctl.is_sleeping() is False
        await ctl.warm_up()
    # the health poll carries no key (vLLM's /health needs none); every control call does
    assert [c.headers.get("connection") for c in server.calls] == ["close"] * 3
    assert [c.headers.get("authorization") for c in server.calls[1:]] == [
        "Bearer sk-backend-123"
    ] * 2


async def test_a_failed_wake_raises_with_vllms_message() -> None:
    ctl, server, client = await control(asleep=True)
    server.wake_oom()
    async with client:
        with pytest.raises(ControlError, match=rf"POST /wake_up answered 500: .*{re.escape(OOM)}"):
            await ctl.wake(1)
        assert await ctl.is_sleeping() is True
        with pytest.raises(ControlError, match="invalid argument"):
            await ctl.wake(1)  # vLLM 0.26 does not roll back: the engine is wedged
    assert server.count("POST /wake_up") == 2


@pytest.mark.parametrize(
    "body",
    [{"is_sleeping": "yes"}, {"sleeping": True}, ["is_sleeping"], "not json"],
    ids=["not-a-bool", "no-key", "a-list", "text"],
)
async def test_is_sleeping_accepts_only_a_boolean(body: Any) -> None:
    ctl, server, client = await control()
    server.fail("GET", "/is_sleeping", status=200, body=body)
    async with client:
        with pytest.raises(ControlError, match="/is_sleeping answered"):
            await ctl.is_sleeping()


async def test_health_is_false_while_refused_or_dead_and_true_once_up() -> None:
    ctl, server, client = await control(up=False)
    async with client:
        assert await ctl.health() is False  # connection refused
        server.power_on()
        assert await ctl.health() is True
        server.dead = True
        assert await ctl.health() is False  # vLLM's /health is 503 once the engine died


async def test_a_refused_control_call_is_a_control_error() -> None:
    ctl, _server, client = await control(up=False)
    async with client:
        with pytest.raises(ControlError, match="ConnectError"):
            await ctl.sleep(1)


@pytest.mark.parametrize(
    ("endpoint", "path", "body"),
    [
        ("completions", "/v1/completions", {"model": "served", "prompt": "Hi", "max_tokens": 1}),
        (
            "chat",
            "/v1/chat/completions",
            {
                "model": "served",
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 1,
            },
        ),
        ("embeddings", "/v1/embeddings", {"model": "served", "input": "Hi"}),
    ],
)
async def test_warm_up_sends_one_tiny_request_to_the_served_name(
    endpoint: str, path: str, body: dict[str, Any]
) -> None:
    ctl, server, client = await control(served_name="served", warmup={"endpoint": endpoint})
    server.embeddings = True
    async with client:
        await ctl.warm_up()
    assert [(c.path, c.body) for c in server.calls] == [(path, body)]


async def test_warm_up_of_an_unsupported_endpoint_fails() -> None:
    ctl, _server, client = await control(warmup={"endpoint": "embeddings"})
    async with client:
        with pytest.raises(ControlError, match=r"400.*does not support Embeddings"):
            await ctl.warm_up()


async def test_a_request_to_a_sleeping_engine_hangs_until_it_is_woken() -> None:
    """What makes the proxy's invariant matter: vLLM queues it; nothing answers while asleep."""
    ctl, server, client = await control(asleep=True)
    async with client:
        warm = asyncio.create_task(ctl.warm_up())
        await asyncio.sleep(3600)
        assert not warm.done()
        await ctl.wake(1)
        await warm
    assert server.stats["generations"] == 1


async def test_a_call_in_flight_fails_when_the_server_dies() -> None:
    ctl, server, client = await control()
    gate = server.hold("POST", "/sleep")
    async with client:
        sleep = asyncio.create_task(ctl.sleep(1))
        await gate.reached()
        server.power_off()
        with pytest.raises(ControlError, match="RemoteProtocolError"):
            await sleep


# ----- the fake's own fidelity (the proxy's safety depends on it) ---------------------------------
async def test_fake_stays_asleep_until_every_tag_is_awake() -> None:
    ctl, _server, client = await control(asleep=True, level=2)
    async with client:
        await client.post(f"{URL}/wake_up", params={"tags": "weights"})
        assert await ctl.is_sleeping() is True
        await client.post(f"{URL}/collective_rpc", json={"method": "reload_weights"})
        await client.post(f"{URL}/wake_up", params={"tags": "kv_cache"})
        assert await ctl.is_sleeping() is False


@pytest.mark.parametrize(
    "first",
    [
        ("/wake_up", {"tags": "kv_cache"}, None),
        ("/collective_rpc", {}, {"method": "reload_weights"}),
    ],
    ids=["kv-cache-first", "reload-into-sleeping-weights"],
)
async def test_fake_engine_dies_on_a_wrong_level2_order(
    first: tuple[str, dict[str, str], Any],
) -> None:
    ctl, server, client = await control(asleep=True, level=2)
    path, params, body = first
    async with client:
        r = await client.post(f"{URL}{path}", params=params, json=body)
        assert r.status_code == 500
        assert await ctl.health() is False
    assert server.dead


async def test_fake_level2_without_reload_answers_garbage() -> None:
    ctl, server, client = await control(asleep=True, level=2)
    async with client:
        await client.post(f"{URL}/wake_up")
        await ctl.warm_up()
    assert server.stats["garbage"] == 1


async def test_fake_sleep_mode_wait_waits_for_running_requests() -> None:
    ctl, server, client = await control()
    hold = server.hold("POST", "/v1/completions")
    async with client:
        warm = asyncio.create_task(ctl.warm_up())
        await hold.reached()
        sleep = asyncio.create_task(ctl.sleep(1))
        await until(lambda: server.count("POST /sleep?level=1&mode=wait") == 1)
        await asyncio.sleep(60)
        assert not sleep.done(), "mode=wait waits for the running request"
        hold.open()
        await warm
        await sleep
    assert server.is_sleeping
