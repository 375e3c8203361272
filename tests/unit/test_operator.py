"""The operator's model controls (switching/operator.py) on the real switcher, fake vLLM
servers and virtual time: each goes through the group's lock and the policy like a request,
and each refuses what the model's state does not allow, saying what to do instead."""

from __future__ import annotations

import asyncio

import pytest

from proxy.errors import BackendUnavailableError, ConflictError
from proxy.switching.operator import Operator
from tests.unit.rig import Rig, build_config, rig, supervised, until

pytestmark = pytest.mark.looptime
AB = build_config("model-a", "model-b")  # model-b awake after start-up
DEFAULT = {"policy": "default", "max_wait_s": 5, "min_residency_s": 2}


def operator(r: Rig) -> Operator:
    return r.services.operator


async def test_sleep_drains_then_sleeps_and_a_request_wakes_it_again() -> None:
    async with rig(AB) as r:
        lease, _ = await r.lease("model-b")
        sleeping = asyncio.create_task(operator(r).sleep(r.backend("model-b")))
        await until(lambda: r.backend("model-b").draining)
        assert not sleeping.done(), "it waits for the request in flight"
        lease.release()
        done = await sleeping
        assert (done.action, done.state) == ("sleep", "asleep")
        assert "model-b: POST /sleep?level=1&mode=wait" in r.vllm.log()
        await r.served("model-b")
        assert r.state("model-b") == "ready"


async def test_sleep_of_an_asleep_model_does_nothing_and_of_a_failed_one_is_refused() -> None:
    async with rig(AB) as r:
        done = await operator(r).sleep(r.backend("model-a"))
        assert done.detail == "already asleep"
        r.server("model-a").wake_oom()
        with pytest.raises(BackendUnavailableError):
            await r.lease("model-a")
        with pytest.raises(ConflictError, match=r"POST /admin/models/model-a/reset"):
            await operator(r).sleep(r.backend("model-a"))


async def test_wake_goes_through_the_policy_like_a_request() -> None:
    """With the default policy a busy resident keeps the GPU until the wake is due."""
    config = build_config("model-a", "model-b", scheduling=DEFAULT)
    async with rig(config) as r:
        t0 = asyncio.get_running_loop().time()
        stream, _ = await r.lease("model-b")
        waking = asyncio.create_task(operator(r).wake(r.backend("model-a")))
        await asyncio.sleep(3)
        assert not waking.done(), "held while model-b serves (max_wait_s less a switch)"
        stream.release()
        done = await waking
        assert (done.action, done.state) == ("wake", "ready")
        assert asyncio.get_running_loop().time() - t0 >= 3
        assert (await operator(r).wake(r.backend("model-a"))).detail == "already awake"


async def test_restart_stops_without_a_crash_forgets_a_crash_loop_and_starts_it() -> None:
    config = build_config(supervised("model-a", restart={"max_restarts": 0, "backoff_s": 0}))
    async with rig(config) as r:
        r.process("model-a").crash(-9)
        await until(lambda: r.state("model-a") == "failed")
        assert r.supervisor.restart_wait(r.backend("model-a")) is None, "a crash loop"
        with pytest.raises(BackendUnavailableError, match="restart starts it again"):
            await r.lease("model-a")
        done = await operator(r).restart(r.backend("model-a"))
        assert (done.action, done.state) == ("restart", "ready")
        assert r.process("model-a").starts == 2
        await r.served("model-a")
        lease, _ = await r.lease("model-a")
        restarting = asyncio.create_task(operator(r).restart(r.backend("model-a")))
        await until(lambda: r.backend("model-a").draining)
        assert not restarting.done(), "a request in flight ends before the process stops"
        lease.release()
        assert (await restarting).state == "ready"
        assert r.process("model-a").starts == 3
        assert r.supervisor.restarts("model-a") == 2
        assert r.supervisor.restart_wait(r.backend("model-a")) == 0, "no crash was counted"


async def test_restart_of_an_attached_backend_and_reset_of_a_supervised_one_are_refused() -> None:
    config = build_config("model-a", supervised("model-b"))
    async with rig(config) as r:
        with pytest.raises(ConflictError, match="cannot restart"):
            await operator(r).restart(r.backend("model-a"))
        with pytest.raises(ConflictError, match="restart starts its process"):
            await operator(r).reset(r.backend("model-b"))


async def test_reset_adopts_a_fixed_engine_asleep_and_unblocks_its_group() -> None:
    """A wake into too little memory wedges the engine and blocks the GPU (it may hold
    memory). The operator restarts vLLM by hand; reset checks it and adopts it asleep. (A
    wedged engine still answers /health and /is_sleeping, as vLLM 0.26 does: reset trusts the
    operator's word that it was fixed; if not, its next wake fails and blocks the GPU again.)"""
    async with rig(AB) as r:
        r.server("model-a").wake_oom()
        with pytest.raises(BackendUnavailableError):
            await r.lease("model-a")
        assert r.state("model-a") == "failed"
        r.server("model-a").power_off()  # the operator stopped it: reset finds nothing
        with pytest.raises(BackendUnavailableError, match="still not usable"):
            await operator(r).reset(r.backend("model-a"))
        assert r.state("model-a") == "failed"
        r.server("model-a").power_on(asleep=True)  # started again by hand
        done = await operator(r).reset(r.backend("model-a"))
        assert (done.state, r.backend("model-a").failure) == ("asleep", None)
        await r.served("model-a")
        assert r.state("model-a") == "ready"
        with pytest.raises(ConflictError, match="not failed"):
            await operator(r).reset(r.backend("model-a"))


async def test_reset_of_an_engine_that_came_back_awake_puts_it_to_sleep_first() -> None:
    async with rig(AB) as r:
        r.server("model-a").wake_oom()
        with pytest.raises(BackendUnavailableError):
            await r.lease("model-a")
        r.server("model-a").power_on(asleep=False)
        r.forget()
        assert (await operator(r).reset(r.backend("model-a"))).state == "asleep"
        assert "model-a: POST /sleep?level=1&mode=wait" in r.vllm.log()
        assert not r.server("model-a").up or r.server("model-a").is_sleeping


async def test_a_level_2_reset_needs_everything_else_asleep() -> None:
    config = build_config({"name": "model-a", "sleep_level": 2}, "model-b", gpus={"g0": 2})
    async with rig(config) as r:
        r.server("model-a").wake_oom()
        with pytest.raises(BackendUnavailableError):
            await r.lease("model-a")
        r.server("model-a").power_on(asleep=True, level=2)
        await r.served("model-b")  # (start-up slept it to reset model-a, a level-2 member)
        with pytest.raises(ConflictError, match="sleep model-b first"):
            await operator(r).reset(r.backend("model-a"))
        await operator(r).sleep(r.backend("model-b"))
        r.forget()
        assert (await operator(r).reset(r.backend("model-a"))).state == "asleep"
        assert "model-a: POST /sleep?level=2&mode=wait" in r.vllm.log(), "woken in full, slept"


async def test_every_action_and_switch_is_an_event() -> None:
    async with rig(AB) as r:
        await r.served("model-a")
        await operator(r).sleep(r.backend("model-a"))
        events = [
            (e.type, e.data.get("model") or e.data.get("to")) for e in r.services.events.recent()
        ]
    assert ("switch", "model-a") in events
    assert ("state", "model-a") in events
    assert ("operator", "model-a") in events
    states = [
        e.data["state"]
        for e in r.services.events.recent()
        if e.type == "state" and e.data["model"] == "model-a"
    ]
    assert states == ["asleep", "waking", "ready", "sleeping", "asleep"]  # from start-up on
