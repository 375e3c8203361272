"""Drains and the races around them: who may still enter a draining model, who waits for the
next wake, what a drain that does not end does, and clients that leave the queue."""

from __future__ import annotations

import asyncio

import pytest

from proxy.errors import BackendUnavailableError
from tests.unit.rig import build_config, rig, settle, until

pytestmark = pytest.mark.looptime
AB = build_config("model-a", "model-b")


async def test_the_requests_a_model_was_woken_for_are_served_before_it_sleeps_again() -> None:
    """Invariant 3: model-a wakes for 5 requests while a switch to model-b already waits behind
    that wake. model-b's drain of model-a must let those 5 in (their tickets are early), and
    model-a sleeps only once they are done."""
    async with rig(AB) as r:
        a = r.backend("model-a")
        gate = r.server("model-a").hold("POST", "/wake_up")
        woken_for = [r.request("model-a") for _ in range(5)]
        await gate.reached()
        b = r.request("model-b")
        await until(lambda: r.switcher.waiting["model-b"] == 1)
        gate.open()
        await until(lambda: a.draining)
        assert a.early_waiters == 5, "the drain began before they took their leases"
        leases = [lease for lease, _ in await asyncio.gather(*woken_for)]
        assert a.leases == 5
        await asyncio.sleep(300)  # long requests: the drain waits for them (drain_s is 600)
        assert r.server("model-a").count("POST /sleep?level=1&mode=wait") == 0
        assert not b.done()
        for lease in leases:
            lease.release()
        await b
        assert r.states() == {"model-a": "asleep", "model-b": "ready"}


async def test_a_request_that_came_during_a_drain_is_first_in_line_for_the_next_wake() -> None:
    """W arrives for model-a while model-a drains (too late for its turn). When model-a wakes
    again for W and another switch to model-b already waits behind that wake, model-b's drain
    must wait for W instead of sleeping model-a under it again (the soak's 30 s starvation)."""
    async with rig(AB, awake={"model-a"}) as r:
        a = r.backend("model-a")
        stream, _ = await r.lease("model-a")
        b1 = r.request("model-b")
        await until(lambda: a.draining)
        w = r.request("model-a")
        await until(lambda: r.switcher.waiting["model-a"] == 1)
        assert a.early_waiters == 0, "too late for this drain"
        next_wake = r.server("model-a").hold("POST", "/wake_up")
        stream.release()
        lease_b1, _ = await b1
        lease_b1.release()
        await next_wake.reached()
        assert a.early_waiters == 1, "W re-queued as early for the next wake"
        b2 = r.request("model-b")
        await until(lambda: r.switcher.waiting["model-b"] == 1)
        next_wake.open()
        lease_w, _ = await w
        assert r.server("model-a").count("POST /wake_up") == 1, "W waited through another turn"
        assert not b2.done()
        lease_w.release()
        await b2


async def test_a_long_request_delays_the_switch_until_it_ends() -> None:
    async with rig(AB) as r:
        loop = asyncio.get_running_loop()
        stream, _ = await r.lease("model-b")
        a = r.request("model-a")
        await until(lambda: r.backend("model-b").draining)
        await asyncio.sleep(100)
        assert r.vllm.log() == [], "nothing is slept under a running request"
        stream.release()
        await a
        assert loop.time() == 100
        assert r.vllm.log()[0] == "model-b: POST /sleep?level=1&mode=wait"


async def test_a_drain_that_does_not_end_aborts_the_switch_and_the_victim_keeps_serving() -> None:
    config = build_config("model-a", {"name": "model-b", "timeouts": {"drain_s": 30}})
    async with rig(config) as r:
        loop = asyncio.get_running_loop()
        stream, _ = await r.lease("model-b")
        waiters = [r.request("model-a") for _ in range(3)]
        await until(lambda: r.backend("model-b").draining)
        assert r.switcher.lease_now("model-b") is None, "no new request enters a drain"
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert loop.time() == 30
        for result in results:
            assert isinstance(result, BackendUnavailableError)
            assert "'model-b' still had requests in flight after 30s; not switching" in str(result)
        assert r.states() == {"model-a": "asleep", "model-b": "ready"}
        assert not r.backend("model-b").draining
        other = r.switcher.lease_now("model-b")
        assert other is not None, "model-b serves again at once"
        stream.release()
        other[0].release()
    assert r.vllm.log() == [], "nothing was slept, nothing woken"
    assert r.switches("model-b", "model-a", "failed") == 1


async def test_a_request_refused_by_a_drain_that_then_timed_out_is_served_at_once() -> None:
    """A former bug, fixed: a request for model-b that came during model-b's drain waits on the backend's change
    event; when the drain times out, Transitions clears `draining` without notifying, so that
    request sleeps on until some lease of model-b is released - here the very stream the drain
    could not outwait - or its queue timeout (503), while model-b is READY and serves newer
    requests at once. Fix: clear the drain through the backend so that it notifies."""
    config = build_config("model-a", {"name": "model-b", "timeouts": {"drain_s": 30}})
    async with rig(config) as r:
        stream, _ = await r.lease("model-b")
        a = r.request("model-a")
        await until(lambda: r.backend("model-b").draining)
        late = r.request("model-b")
        await until(lambda: r.switcher.waiting["model-b"] == 1)
        with pytest.raises(BackendUnavailableError, match="still had requests in flight"):
            await a
        await settle()
        assert late.done(), "model-b is READY and no longer draining"
        stream.release()


async def test_a_request_for_the_victim_during_its_drain_gets_it_back_afterwards() -> None:
    async with rig(AB) as r:
        stream, _ = await r.lease("model-b")
        a = r.request("model-a")
        await until(lambda: r.backend("model-b").draining)
        late_b = r.request("model-b")
        await settle()
        assert not late_b.done(), "no new request enters a drain"
        stream.release()
        lease_a, _ = await a
        await settle()
        assert not late_b.done(), "model-a is not slept under the request it woke for"
        lease_a.release()
        await late_b
        assert r.states() == {"model-a": "asleep", "model-b": "ready"}
    assert [line for line in r.vllm.log() if "sleep?" in line or "wake_up" in line] == [
        "model-b: POST /sleep?level=1&mode=wait",
        "model-a: POST /wake_up",
        "model-a: POST /sleep?level=1&mode=wait",
        "model-b: POST /wake_up",
    ]


async def test_clients_that_leave_the_queue_leave_the_counts_right() -> None:
    async with rig(AB) as r:
        a = r.backend("model-a")
        gate = r.server("model-a").hold("POST", "/wake_up")
        waiters = [r.request("model-a") for _ in range(3)]
        await gate.reached()
        await until(lambda: r.switcher.waiting["model-a"] == 3)
        assert a.early_waiters == 3
        waiters[0].cancel()
        waiters[1].cancel()
        await until(lambda: r.switcher.waiting["model-a"] == 1)
        assert a.early_waiters == 1
        gate.open()
        lease, _ = await waiters[2]
        assert (a.leases, a.early_waiters, r.switcher.waiting["model-a"]) == (1, 0, 0)
        assert waiters[0].cancelled()
        lease.release()
        await r.served("model-b")  # nothing is left behind to hold model-a's drain
        assert r.states() == {"model-a": "asleep", "model-b": "ready"}


async def test_the_switch_finishes_when_every_waiter_left() -> None:
    async with rig(AB) as r:
        gate = r.server("model-a").hold("POST", "/wake_up")
        waiters = [r.request("model-a") for _ in range(3)]
        await gate.reached()
        for waiter in waiters:
            waiter.cancel()
        await until(lambda: r.switcher.waiting["model-a"] == 0)
        gate.open()
        await until(lambda: r.state("model-a") == "ready")
        assert r.backend("model-a").early_waiters == 0
        assert r.switcher.lease_now("model-a") is not None


async def test_a_client_that_leaves_while_its_model_drains_does_not_hold_the_drain() -> None:
    """A late request for the victim (queued while it drains) leaves: the switch goes on."""
    async with rig(AB) as r:
        stream, _ = await r.lease("model-b")
        a = r.request("model-a")
        await until(lambda: r.backend("model-b").draining)
        late_b = r.request("model-b")
        await until(lambda: r.switcher.waiting["model-b"] == 1)
        late_b.cancel()
        await until(lambda: r.switcher.waiting["model-b"] == 0)
        stream.release()
        await a
        assert r.states() == {"model-a": "ready", "model-b": "asleep"}
