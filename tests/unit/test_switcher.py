"""Switcher: one switch for many requests, the victim it picks, the queue's limits, timings."""

from __future__ import annotations

import asyncio

import pytest

from proxy.backends.backend import NO_SWITCH, WakeTimings
from proxy.errors import BackendUnavailableError, QueueFullError
from tests.unit.rig import TWO_GROUPS, build_config, rig, until

pytestmark = pytest.mark.looptime
AB = build_config("model-a", "model-b")  # one GPU, max_awake 1; model-b awake after start-up
SWITCH_B_TO_A = [
    "model-b: POST /sleep?level=1&mode=wait",
    "model-b: GET /is_sleeping",
    "model-a: POST /wake_up",
    "model-a: GET /is_sleeping",
    "model-a: POST /v1/completions",
]


async def test_a_ready_model_is_leased_at_once_without_any_call() -> None:
    async with rig(AB) as r:
        now = r.switcher.lease_now("model-b")
        assert now is not None
        assert now[1] is NO_SWITCH
        assert (await r.lease("model-b"))[1] is NO_SWITCH
        assert r.switcher.lease_now("model-a") is None
    assert r.vllm.log() == []
    assert r.backend("model-b").leases == 2


async def test_concurrent_requests_share_one_switch() -> None:
    async with rig(AB) as r:
        results = await asyncio.gather(*(r.lease("model-a") for _ in range(20)))
        assert r.states() == {"model-a": "ready", "model-b": "asleep"}
        assert r.backend("model-a").leases == 20
        assert r.switcher.waiting["model-a"] == 0
        assert r.backend("model-a").early_waiters == 0
    assert r.vllm.log() == SWITCH_B_TO_A, "1 sleep, 1 wake, 1 warm-up for 20 requests"
    assert len({id(timings) for _, timings in results}) == 1, "they all report the one switch"
    assert r.switches("model-b", "model-a", "ok") == 1


async def test_a_request_that_arrives_mid_wake_joins_the_same_switch() -> None:
    async with rig(AB) as r:
        gate = r.server("model-a").hold("POST", "/wake_up")
        first = r.request("model-a")
        await gate.reached()
        assert r.state("model-a") == "waking"
        late = r.request("model-a")
        await until(lambda: r.switcher.waiting["model-a"] == 2)
        gate.open()
        await asyncio.gather(first, late)
    assert r.server("model-a").count("POST /wake_up") == 1


async def test_timings_say_what_the_switch_cost_on_the_clock() -> None:
    async with rig(AB) as r:
        steps = [
            (r.server("model-b").hold("POST", "/sleep"), 1.5),
            (r.server("model-a").hold("POST", "/wake_up"), 2.0),
            (r.server("model-a").hold("POST", "/v1/completions"), 0.25),
        ]
        request = r.request("model-a")
        for gate, seconds in steps:
            await gate.reached()
            await asyncio.sleep(seconds)
            gate.open()
        _, timings = await request
        assert timings == WakeTimings(sleep_ms=1500.0, wake_ms=2000.0, warmup_ms=250.0)
        assert (await r.lease("model-a"))[1] is NO_SWITCH
        assert r.backend("model-a").last == timings
    assert r.counter("vllm_switch_wake_seconds_sum", model="model-a", level="1") == 2.0
    assert r.counter("vllm_switch_switching_seconds_total", gpu="g0") == 3.75


@pytest.mark.parametrize("victim", ["model-a", "model-b"])
async def test_the_least_recently_used_model_is_the_victim(victim: str) -> None:
    config = build_config("model-a", "model-b", "model-c", gpus={"g0": 2})
    async with rig(config, awake={"model-a", "model-b"}) as r:
        used_last = ({"model-a", "model-b"} - {victim}).pop()
        await r.served(victim)
        await asyncio.sleep(10)
        await r.served(used_last)
        await asyncio.sleep(10)
        await r.served("model-c")
        assert r.states() == {victim: "asleep", used_last: "ready", "model-c": "ready"}
    assert [line for line in r.vllm.log() if "/sleep" in line] == [
        f"{victim}: POST /sleep?level=1&mode=wait"
    ]


async def test_no_victim_while_the_group_has_room() -> None:
    config = build_config("model-a", "model-b", "model-c", gpus={"g0": 2})
    async with rig(config, awake={"model-c"}) as r:
        await r.served("model-a")
        assert r.states() == {"model-a": "ready", "model-b": "asleep", "model-c": "ready"}
    assert r.vllm.log() == [
        "model-a: POST /wake_up",
        "model-a: GET /is_sleeping",
        "model-a: POST /v1/completions",
    ]


async def test_two_gpu_groups_switch_independently_and_at_the_same_time() -> None:
    async with rig(TWO_GROUPS, awake={"model-b", "model-d"}) as r:
        gate = r.server("model-a").hold("POST", "/wake_up")
        a = r.request("model-a")
        await gate.reached()
        await r.served("model-c")  # while g0's switch is stuck mid-wake
        assert r.states() == {
            "model-a": "waking",
            "model-b": "asleep",
            "model-c": "ready",
            "model-d": "asleep",
        }
        assert [g.phase for g in r.switcher.groups()] == ["waking", None]
        gate.open()
        await a
        assert r.state("model-a") == "ready"


async def test_a_full_queue_answers_429_with_retry_after() -> None:
    config = build_config("model-a", "model-b", limits={"queue_size": 2, "retry_after_s": 7})
    async with rig(config) as r:
        gate = r.server("model-a").hold("POST", "/wake_up")
        queued = [r.request("model-a") for _ in range(2)]
        await gate.reached()
        await until(lambda: r.switcher.waiting["model-a"] == 2)
        with pytest.raises(QueueFullError, match="2 requests already wait") as refused:
            await r.lease("model-a")
        assert (refused.value.status_code, refused.value.retry_after_s) == (429, 7)
        assert r.switcher.waiting["model-a"] == 2, "the refused request never queued"
        other = r.request("model-b")  # each model's queue is its own
        await until(lambda: r.switcher.waiting["model-b"] == 1)
        gate.open()
        for lease, _ in await asyncio.gather(*queued):
            lease.release()
        await other
        assert r.switcher.waiting == {"model-a": 0, "model-b": 0}


async def test_a_wait_longer_than_the_queue_timeout_is_503_and_the_switch_goes_on() -> None:
    config = build_config("model-a", "model-b", limits={"queue_timeout_s": 45, "retry_after_s": 7})
    async with rig(config) as r:
        gate = r.server("model-a").hold("POST", "/wake_up")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(BackendUnavailableError, match="not ready within 45s") as timed_out:
            await r.lease("model-a")
        assert loop.time() - t0 == 45
        assert (timed_out.value.status_code, timed_out.value.retry_after_s) == (503, 7)
        assert r.switcher.waiting["model-a"] == 0
        assert r.backend("model-a").early_waiters == 0
        assert r.state("model-a") == "waking", "a waiter leaving never cancels the switch"
        gate.open()
        await until(lambda: r.state("model-a") == "ready")
        assert (await r.lease("model-a"))[1] is NO_SWITCH


async def test_a_level2_switch_sleeps_at_level_2_and_wakes_in_stages() -> None:
    config = build_config(
        {"name": "model-a", "sleep_level": 2}, {"name": "model-b", "sleep_level": 2}
    )
    async with rig(config) as r:
        # start-up reset model-a (level 2, asleep: its weights might be mapped), sleeping
        # model-b first: both are asleep now
        assert r.states() == {"model-a": "asleep", "model-b": "asleep"}
        await r.served("model-a")
        await r.served("model-b")
    assert r.vllm.log() == [
        "model-a: POST /wake_up?tags=weights",
        "model-a: POST /collective_rpc reload_weights",
        "model-a: POST /wake_up?tags=kv_cache",
        "model-a: POST /reset_prefix_cache",
        "model-a: GET /is_sleeping",
        "model-a: POST /v1/completions",
        *("model-a: POST /sleep?level=2&mode=wait", "model-a: GET /is_sleeping"),
        "model-b: POST /wake_up?tags=weights",
        "model-b: POST /collective_rpc reload_weights",
        "model-b: POST /wake_up?tags=kv_cache",
        "model-b: POST /reset_prefix_cache",
        "model-b: GET /is_sleeping",
        "model-b: POST /v1/completions",
    ]
    assert [s.dead for s in r.vllm.servers.values()] == [False, False]


async def test_requests_alternating_between_two_models_switch_every_time() -> None:
    async with rig(AB) as r:
        for model in ["model-a", "model-b", "model-a", "model-b", "model-a"]:
            await r.served(model)
        assert r.states() == {"model-a": "ready", "model-b": "asleep"}
    assert r.server("model-a").count("POST /wake_up") == 3
    assert r.server("model-b").count("POST /sleep?level=1&mode=wait") == 3
