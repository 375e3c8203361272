"""The default scheduling policy, carried out by the real switcher on fake vLLM servers, in
virtual time: the resident is served first up to max_wait_s, an idle resident is evicted only
after its round trip, wake-first on declared memory, idle sleep from the wake, crash reports."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.backends import Lease
from tests.unit.fake_vllm import FakeVllm
from tests.unit.rig import Rig, build_config, rig, supervised, until

pytestmark = pytest.mark.looptime
DEFAULT = {"policy": "default", "max_wait_s": 5, "min_residency_s": 2}
AB = build_config("model-a", "model-b", scheduling=DEFAULT)  # model-b awake after start-up


def now() -> float:
    return asyncio.get_running_loop().time()


async def test_a_busy_resident_keeps_the_gpu_until_the_other_model_waited_max_wait() -> None:
    """max_wait_s (5 s) less the switch's expected cost (nothing measured yet: 0.5 s of sleep
    and 0.5 s of wake): the drain starts at 4 s, so the request is served by max_wait_s."""
    async with rig(AB) as r:
        t0 = now()
        stream, _ = await r.lease("model-b")
        a = r.request("model-a")
        await asyncio.sleep(3.9)  # model-b is busy: the policy holds ("serving")
        assert not a.done()
        assert not r.backend("model-b").draining
        more_b = r.switcher.lease_now("model-b")
        assert more_b is not None, "the resident keeps admitting its own requests meanwhile"
        more_b[0].release()
        await asyncio.sleep(0.2)  # past its due time: drain model-b
        assert r.backend("model-b").draining
        assert r.switcher.lease_now("model-b") is None, "no new request enters the drain"
        stream.release()
        (await a)[0].release()
        assert 4.0 <= now() - t0 < 4.5
        assert r.switches("model-b", "model-a", "ok") == 1
        assert r.state("model-b") == "asleep"
        assert r.counter("vllm_switch_decisions_total", gpu="g0", reason="serving") == 1
        assert r.counter("vllm_switch_decisions_total", gpu="g0", reason="max_wait") == 1


async def test_an_idle_resident_is_put_to_sleep_after_its_round_trip() -> None:
    async with rig(AB) as r:
        t0 = now()
        await r.served("model-a")  # nothing measured yet: 0.5 s + 0.5 s per round trip
        assert now() - t0 == pytest.approx(1.0, abs=0.01)
        assert r.counter("vllm_switch_decisions_total", gpu="g0", reason="linger") == 1
        assert r.counter("vllm_switch_decisions_total", gpu="g0", reason="early_sleep") == 1
        assert r.backend("model-b").sleep_cost_s is not None, "the sleep was measured"
        assert r.backend("model-a").wake_cost_s is not None, "and the wake with its warm-up"


async def test_one_client_hopping_between_models_stops_being_lingered_for() -> None:
    """A pipeline of one client: A, B, A, B... each answer 0.1 s. The model it leaves is idle
    until it comes back after the other model served it, so each of its idle gaps is the
    linger and more: after RETURN_SAMPLES of them the switch starts at once (reason
    no_return); the first ones still linger the measured round trip (0.2 s sleep, 0.2 s
    wake: 0.4 s, against gaps of that linger + the switch + the 0.1 s answer)."""
    async with rig(AB) as r:
        for name in ("model-a", "model-b"):
            r.server(name).call_s = 0.2
        waits = []
        for i in range(14):  # each model's 4th idle gap: at its 5th request (i = 8 and 9)
            t0 = now()
            lease, _ = await r.lease(("model-a", "model-b")[i % 2])
            waits.append(now() - t0)
            await asyncio.sleep(0.1)  # the answer takes 0.1 s; the client goes on at once
            lease.release()
        assert waits[0] == pytest.approx(1.4, abs=0.01), "1 s linger (unmeasured), sleep, wake"
        assert all(w == pytest.approx(0.4, abs=0.01) for w in waits[-4:]), waits  # the switch alone
        assert r.counter("vllm_switch_decisions_total", gpu="g0", reason="no_return") >= 4


async def test_the_linger_is_shared_by_the_requests_that_wait() -> None:
    async with rig(AB) as r:
        t0 = now()
        waiting = [r.request("model-a") for _ in range(4)]
        for task in waiting:
            (await task)[0].release()
        assert now() - t0 == pytest.approx(0.25, abs=0.01), "1 s round trip / 4 requests"


async def test_a_resident_that_gets_a_new_request_within_its_linger_is_not_evicted() -> None:
    """Closed-loop clients: the resident's next request comes before its linger ends, so the
    other model waits until max_wait_s - one switch for a run of requests, not for each."""
    async with rig(AB) as r:
        a = r.request("model-a")
        served_b = 0
        while not a.done():
            lease = r.switcher.lease_now("model-b")
            if lease is None:  # drained: the switch to model-a is under way
                break
            await asyncio.sleep(0.1)  # a request of 0.1 s, then the client sends the next one
            lease[0].release()
            served_b += 1
            await asyncio.sleep(0.01)
        (await a)[0].release()
        assert served_b >= 35, "about 4 s of model-b's requests before the switch"
        assert r.switches("model-b", "model-a", "ok") == 1


async def test_min_residency_keeps_a_just_woken_busy_model() -> None:
    config = build_config("model-a", "model-b", scheduling={**DEFAULT, "min_residency_s": 8})
    async with rig(config) as r:
        t0 = now()
        stream, _ = await r.lease("model-b")
        await asyncio.sleep(0)
        # model-b woke at start-up (ready_at ~ t0): due at 4 s (max_wait_s less the expected
        # switch, 1 s unmeasured), residency at 8 s
        a = r.request("model-a")
        await asyncio.sleep(6)  # past max_wait_s, within min_residency_s
        other = r.switcher.lease_now("model-b")  # an event: the group decides again
        assert other is not None
        other[0].release()
        await asyncio.sleep(1.5)
        assert not a.done()
        assert r.counter("vllm_switch_decisions_total", gpu="g0", reason="min_residency") == 1
        stream.release()
        (await a)[0].release()
        assert now() - t0 >= 8.0


async def test_the_higher_priority_model_is_served_first() -> None:
    config = build_config(
        "model-a", {"name": "model-c", "priority": 1}, "model-b", scheduling=DEFAULT
    )
    async with rig(config) as r:
        a = r.request("model-a")
        await asyncio.sleep(0.1)
        c = r.request("model-c")
        (await c)[0].release()
        assert not a.done(), "model-c first, though model-a waited longer"
        (await a)[0].release()
        woke = [line for line in r.vllm.log() if line.endswith("POST /wake_up")]
        assert woke == ["model-c: POST /wake_up", "model-a: POST /wake_up"]


async def woke_first(r: Rig, lease: Lease) -> None:
    """model-a (leased) woke and warmed up while model-b was still awake; model-b sleeps
    afterwards, in the background."""
    await until(lambda: r.state("model-b") == "asleep")
    log = r.vllm.log()
    assert log.index("model-a: POST /v1/completions") < log.index(
        "model-b: POST /sleep?level=1&mode=wait"
    ), "model-a woke and warmed up while model-b was still awake"
    lease.release()
    assert r.counter("vllm_switch_decisions_total", gpu="g0", reason="memory_fits") == 1


async def test_wake_first_when_declared_memory_fits() -> None:
    models: list[dict[str, Any]] = [
        {"name": n, "memory_gib": 30, "asleep_memory_gib": 1} for n in ("model-a", "model-b")
    ]
    config = build_config(*models, scheduling=DEFAULT, memory_gib=70)
    async with rig(config) as r:
        lease, _ = await r.lease("model-a")
        await woke_first(r, lease)


async def test_no_wake_first_on_undeclared_memory() -> None:
    models: list[dict[str, Any]] = [{"name": "model-a", "memory_gib": 30}, {"name": "model-b"}]
    config = build_config(*models, scheduling=DEFAULT, memory_gib=70)
    async with rig(config) as r:
        (await r.lease("model-a"))[0].release()
        log = r.vllm.log()
        assert log.index("model-b: POST /sleep?level=1&mode=wait") < log.index(
            "model-a: POST /wake_up"
        )


class MeasuredGpu:
    """NVML as the fake servers would move it: an awake engine takes `awake_gib`, an asleep one
    `asleep_gib`, a dead or stopped one nothing. `readings` counts the reads."""

    def __init__(self, vllm: FakeVllm, total_gib: float, awake_gib: float, asleep_gib: float):
        self.vllm, self.total, self.awake, self.asleep = vllm, total_gib, awake_gib, asleep_gib
        self.readings = 0

    def free_gib(self) -> float | None:
        self.readings += 1
        used = sum(
            (self.asleep if s.is_sleeping else self.awake)
            for s in self.vllm.servers.values()
            if s.up and not s.dead
        )
        return self.total - used


def measured(total_gib: float) -> Any:
    return lambda vllm, gpu: MeasuredGpu(vllm, total_gib, awake_gib=30, asleep_gib=1)


async def test_wake_first_on_measured_memory_once_a_wake_was_measured() -> None:
    """No memory declared: the first switch to model-a sleeps model-b first (nothing known of
    model-a's need, and the policy never wakes on a guess); that wake is measured (29 GiB); the
    next switch to model-a wakes it first, since NVML says 69 GiB are free."""
    config = build_config("model-a", "model-b", scheduling=DEFAULT)
    async with rig(config, gpu_memory=measured(100)) as r:
        (await r.lease("model-a"))[0].release()
        log = r.vllm.log()
        assert log.index("model-b: POST /sleep?level=1&mode=wait") < log.index(
            "model-a: POST /wake_up"
        ), "unknown need: sleep-first"
        (await r.lease("model-b"))[0].release()  # model-b's need is measured now too
        r.forget()
        lease, _ = await r.lease("model-a")
        await woke_first(r, lease)


async def test_no_wake_first_when_measured_free_memory_is_short() -> None:
    config = build_config("model-a", "model-b", scheduling=DEFAULT)
    async with rig(config, gpu_memory=measured(60)) as r:  # 29 GiB free beside model-b
        for _ in range(2):
            (await r.lease("model-a"))[0].release()
            (await r.lease("model-b"))[0].release()
        assert r.counter("vllm_switch_decisions_total", gpu="g0", reason="memory_fits") == 0
        assert r.switches("model-b", "model-a", "ok") == 2


async def test_the_switch_back_of_a_pair_is_measured_and_used_for_the_linger() -> None:
    """model-b -> model-a is measured at 0.4 s (its wake). Then an idle model-a lingers for a
    request of model-b that long - the switch back its eviction would cost - and not for its
    own sleep (unmeasured: 0.5 s) plus wake (0.4 s)."""
    async with rig(build_config("model-a", "model-b", scheduling=DEFAULT)) as r:
        gate = r.server("model-a").hold("POST", "/wake_up")
        first = r.request("model-a")
        await gate.reached()  # after model-b's linger: nothing measured, 0.5 s + 0.5 s
        await asyncio.sleep(0.4)
        gate.open()
        (await first)[0].release()
        t0 = now()
        (await r.lease("model-b"))[0].release()
        assert now() - t0 == pytest.approx(0.4, abs=0.01)


async def test_idle_sleep_counts_from_the_wake_not_from_zero() -> None:
    config = build_config("model-a", {"name": "model-b", "idle_sleep_s": 60}, scheduling=DEFAULT)
    async with rig(config) as r:  # model-b woke at start-up and was never used
        assert await r.switcher.sleep_idle(now()) == []
        await asyncio.sleep(60)
        assert await r.switcher.sleep_idle(now()) == ["model-b"]


async def test_a_crash_report_for_a_resident_is_applied_at_once() -> None:
    config = build_config(supervised("model-a"), supervised("model-b"), scheduling=DEFAULT)
    async with rig(config) as r:
        r.process("model-b").crash(-9)
        await until(lambda: r.state("model-b") == "failed")
        assert r.backend("model-b").holds_memory is False
        assert r.switcher.lease_now("model-b") is None


async def test_a_crash_during_the_targets_wake_is_applied_after_the_step() -> None:
    config = build_config(supervised("model-a"), supervised("model-b"), scheduling=DEFAULT)
    async with rig(config) as r:
        gate = r.server("model-a").hold("POST", "/wake_up")
        a = r.request("model-a")
        await gate.reached()
        assert r.state("model-a") == "waking"
        r.process("model-a").crash(-9)  # its wake call fails with it; the step marks it FAILED
        with pytest.raises(Exception, match="could not wake"):
            await a
        assert (r.state("model-a"), r.backend("model-a").holds_memory) == ("failed", False)


async def test_a_supervised_backend_that_crashes_in_its_warm_up_never_blocks_the_group() -> None:
    """The wake worked, then the process died during the warm-up: the best-effort sleep fails
    too, so the backend may hold memory - the supervised one is killed (or found dead) and its
    group stays usable for the others."""
    config = build_config(supervised("model-a"), supervised("model-b"), scheduling=DEFAULT)
    async with rig(config) as r:
        gate = r.server("model-a").hold("POST", "/v1/completions")
        a = r.request("model-a")
        await gate.reached()
        r.process("model-a").crash(-9)
        with pytest.raises(Exception, match="could not warm up"):
            await a
        assert (r.state("model-a"), r.backend("model-a").holds_memory) == ("failed", False)
        assert r.switcher.servable() != [], "the group is not blocked"
        await r.served("model-b")  # woken back, or woken for this request


async def test_a_supervised_engine_that_will_not_sleep_after_a_failed_warm_up_is_killed() -> None:
    config = build_config(supervised("model-a"), supervised("model-b"), scheduling=DEFAULT)
    async with rig(config) as r:
        r.server("model-a").fail("POST", "/v1/completions", "engine error")
        r.server("model-a").fail("POST", "/sleep", "cannot sleep")
        with pytest.raises(Exception, match="could not warm up"):
            await r.lease("model-a")
        assert r.process("model-a").kills == 1, "only a dead process surely frees its memory"
        assert (r.state("model-a"), r.backend("model-a").holds_memory) == ("failed", False)
        await r.served("model-b")


async def test_max_hold_ends_the_streams_that_keep_a_drained_model_awake() -> None:
    config = build_config("model-a", "model-b", scheduling={**DEFAULT, "max_hold_s": 3})
    async with rig(config) as r:
        t0 = now()
        stream, _ = await r.lease("model-b")  # a slow reader: it would hold model-b for good
        reasons: list[str] = []

        def revoke(reason: str) -> None:  # what the forwarded response does: end, release
            reasons.append(reason)
            stream.release()

        stream.on_revoke = revoke
        (await r.lease("model-a"))[0].release()
        assert now() - t0 == pytest.approx(4 + 3, abs=0.01), "max_wait_s - 1 s, then max_hold_s"
        assert len(reasons) == 1
        assert "max_hold_s=3s" in reasons[0]
        assert r.counter("vllm_switch_decisions_total", gpu="g0", reason="hold") == 1


async def test_without_max_hold_a_stream_may_hold_until_drain_s() -> None:
    models: list[dict[str, Any]] = [
        {"name": n, "timeouts": {"drain_s": 30}} for n in ("model-a", "model-b")
    ]
    config = build_config(*models, scheduling=DEFAULT)
    async with rig(config) as r:
        stream, _ = await r.lease("model-b")
        stream.on_revoke = lambda _reason: pytest.fail("nothing is revoked without max_hold_s")
        with pytest.raises(Exception, match="still had requests in flight after 30s"):
            await r.lease("model-a")
        assert r.state("model-b") == "ready", "the drain gave up: model-b keeps serving"
        stream.release()


async def test_a_busy_preemptible_model_pauses_instead_of_draining_and_gets_its_turn_back() -> None:
    models: list[dict[str, Any]] = [
        {"name": "model-a"},
        {"name": "model-b", "preemptible": True},  # model-b: a long batch job, say
    ]
    async with rig(build_config(*models, scheduling=DEFAULT)) as r:
        t0 = now()
        job, _ = await r.lease("model-b")
        a = r.request("model-a")
        lease_a, _ = await a
        assert now() - t0 == pytest.approx(4, abs=0.01), "due at 4 s, and no drain after it"
        assert "model-b: POST /sleep?level=1&mode=keep" in r.vllm.log()
        assert r.backend("model-b").paused == 1, "the job's request is paused, its lease held"
        assert r.counter("vllm_switch_decisions_total", gpu="g0", reason="preempt") == 1
        lease_a.release()
        # model-b's paused request is demand: once model-a is idle past its linger, model-b
        # wakes again by itself (no new request for it) and the job goes on
        await asyncio.sleep(2)  # model-a's linger: 1 s before anything was measured
        assert r.state("model-b") == "ready"
        assert r.backend("model-b").paused == 0
        assert r.backend("model-b").leases == 1, "the same lease, resumed"
        job.release()


async def test_a_preempted_model_whose_paused_requests_left_is_not_woken_for_nothing() -> None:
    models: list[dict[str, Any]] = [{"name": "model-a"}, {"name": "model-b", "preemptible": True}]
    async with rig(build_config(*models, scheduling=DEFAULT)) as r:
        job, _ = await r.lease("model-b")
        lease_a, _ = await r.lease("model-a")
        job.release()  # its client left while it was paused
        lease_a.release()
        await asyncio.sleep(30)
        assert r.state("model-b") == "asleep"
        assert r.state("model-a") == "ready"


@pytest.mark.parametrize("policy", ["fifo", "naive"])
async def test_fifo_joins_the_switch_under_way_and_naive_keeps_arrival_order(policy: str) -> None:
    """a1 wakes model-a; b2 then a2 arrive during that wake. fifo (as llama-swap): a2 joins the
    wake and is served with a1, before the older b2. naive: a2 waits until b2 was served."""
    async with rig(build_config("model-a", "model-b", scheduling={"policy": policy})) as r:
        gate = r.server("model-a").hold("POST", "/wake_up")
        a1 = r.request("model-a")
        await gate.reached()
        b2 = r.request("model-b")
        await asyncio.sleep(0.001)
        a2 = r.request("model-a")
        await asyncio.sleep(0.001)
        assert r.switcher.lease_now("model-a") is None
        gate.open()
        (await a1)[0].release()
        if policy == "fifo":
            (await a2)[0].release()
            assert not b2.done(), "a2 overtook the older b2 by joining the wake"
            (await b2)[0].release()
        else:
            await until(lambda: b2.done())
            assert not a2.done(), "a2 never starts before the older b2"
            (await b2)[0].release()
            (await a2)[0].release()
        assert r.counter("vllm_switch_decisions_total", gpu="g0", reason=policy) >= 2


@pytest.mark.parametrize("policy", ["fifo", "naive"])
async def test_naive_refuses_the_fast_path_while_an_older_request_waits(policy: str) -> None:
    """Two awake of three: while model-c wakes (for an older request), model-b - awake, not
    draining - serves a new request at once under fifo, and only after model-c's under naive."""
    config = build_config(
        "model-a", "model-b", "model-c", gpus={"g0": 2}, scheduling={"policy": policy}
    )
    async with rig(config, awake=("model-a", "model-b")) as r:
        await r.served("model-b")  # model-a is the least recently used: the victim
        gate = r.server("model-c").hold("POST", "/wake_up")
        c = r.request("model-c")
        await gate.reached()
        await asyncio.sleep(0.001)  # arrivals of the same instant are not ordered
        fast = r.switcher.lease_now("model-b")
        b = r.request("model-b")
        await asyncio.sleep(0.001)
        if policy == "fifo":
            assert fast is not None
            fast[0].release()
            (await b)[0].release()
        else:
            assert fast is None
            assert not b.done(), "model-b's request waits for the older one of model-c"
        gate.open()
        (await c)[0].release()
        (await b)[0].release()
