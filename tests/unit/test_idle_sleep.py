"""Idle sleep: a READY model unused for its `idle_sleep_s` is put to sleep - never one with a
request in flight or waiting, never while a switch runs in its group."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.rig import build_config, rig

pytestmark = pytest.mark.looptime
IDLE_B = build_config("model-a", {"name": "model-b", "idle_sleep_s": 60})


async def test_a_model_unused_for_its_ttl_is_put_to_sleep() -> None:
    async with rig(IDLE_B) as r:
        now = r.switcher.clock.monotonic
        await asyncio.sleep(5)
        await r.served("model-b")  # last used at t=5
        await asyncio.sleep(59)
        assert await r.switcher.sleep_idle(now()) == []
        await asyncio.sleep(1)
        assert await r.switcher.sleep_idle(now()) == ["model-b"]
        assert r.states() == {"model-a": "asleep", "model-b": "asleep"}
        assert await r.switcher.sleep_idle(now()) == []
    assert r.vllm.log() == ["model-b: POST /sleep?level=1&mode=wait", "model-b: GET /is_sleeping"]


async def test_a_model_with_a_request_in_flight_is_never_idle() -> None:
    async with rig(IDLE_B) as r:
        now = r.switcher.clock.monotonic
        stream, _ = await r.lease("model-b")
        await asyncio.sleep(1000)
        assert await r.switcher.sleep_idle(now()) == []
        stream.release()  # the end of a request is a use
        await asyncio.sleep(59)
        assert await r.switcher.sleep_idle(now()) == []
        await asyncio.sleep(1)
        assert await r.switcher.sleep_idle(now()) == ["model-b"]


async def test_a_model_with_a_request_waiting_for_it_is_never_idle() -> None:
    async with rig(IDLE_B) as r:
        await asyncio.sleep(1000)
        r.switcher.waiting["model-b"] += 1  # a request between its queueing and its lease
        assert await r.switcher.sleep_idle(r.switcher.clock.monotonic()) == []
        r.switcher.waiting["model-b"] -= 1
        assert await r.switcher.sleep_idle(r.switcher.clock.monotonic()) == ["model-b"]


async def test_no_idle_sleep_while_a_switch_runs_in_the_group() -> None:
    config = build_config("model-a", {"name": "model-b", "idle_sleep_s": 60}, gpus={"g0": 2})
    async with rig(config) as r:
        gate = r.server("model-a").hold("POST", "/wake_up")
        a = r.request("model-a")
        await gate.reached()
        await asyncio.sleep(100)
        assert await r.switcher.sleep_idle(r.switcher.clock.monotonic()) == []
        gate.open()
        await a
        assert await r.switcher.sleep_idle(r.switcher.clock.monotonic()) == ["model-b"]
        assert r.states() == {"model-a": "ready", "model-b": "asleep"}


async def test_a_failed_idle_sleep_fails_the_model_and_is_not_reported_as_slept() -> None:
    async with rig(IDLE_B) as r:
        r.server("model-b").fail("POST", "/sleep", "boom")
        await asyncio.sleep(60)
        assert await r.switcher.sleep_idle(r.switcher.clock.monotonic()) == []
        assert (r.state("model-b"), r.backend("model-b").holds_memory) == ("failed", True)
        assert [g.phase for g in r.switcher.groups()] == [None]


async def test_the_services_idle_loop_sleeps_it_on_the_clock() -> None:
    async with rig(IDLE_B, reconcile=False) as r, r.services.running():
        await r.switcher.wait_reconciled()
        await r.served("model-b")
        await asyncio.sleep(59.5)
        assert r.state("model-b") == "ready"
        await asyncio.sleep(1.5)  # the loop looks every min(1 s, ttl / 4)
        assert r.state("model-b") == "asleep"
