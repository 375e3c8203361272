"""Backend: its state machine, tickets, leases and drain, and its own sleep/wake steps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from proxy.backends import Backend, BackendState, VllmControl
from proxy.backends.state import ALLOWED
from proxy.config import ModelConfig
from tests.unit.fake_vllm import FakeServer, FakeVllm
from tests.unit.fakes import EPOCH, LoopClock
from tests.unit.rig import settle

pytestmark = pytest.mark.looptime
S = BackendState
URL = "http://127.0.0.1:8001"


@asynccontextmanager
async def one_backend(
    *, asleep: bool = False, **extra: Any
) -> AsyncIterator[tuple[Backend, FakeServer]]:
    """A Backend of model "m" on its own FakeServer (awake unless `asleep`)."""
    vllm = FakeVllm()
    cfg = ModelConfig.model_validate({"name": "m", "url": URL, **extra})
    server = vllm.add("m", URL, asleep=asleep, level=cfg.sleep_level)
    async with httpx.AsyncClient(transport=vllm.transport) as client:
        yield Backend(cfg, VllmControl(cfg, client), LoopClock()), server


@pytest.fixture
async def made() -> AsyncIterator[tuple[Backend, FakeServer]]:
    async with one_backend() as pair:
        yield pair


def memory(backend: Backend) -> tuple[float | None, bool]:
    return backend.awake_since, backend.holds_memory


def state(backend: Backend) -> BackendState:
    return backend.state


def ready(backend: Backend) -> Backend:
    backend.set_state(S.READY)
    return backend


# ----- the state machine ------------------------------------------------------------------------
@pytest.mark.parametrize("old", list(S))
@pytest.mark.parametrize("new", list(S))
async def test_only_allowed_transitions_happen(
    made: tuple[Backend, FakeServer], old: BackendState, new: BackendState
) -> None:
    backend, _ = made
    backend.state = old
    if new is old or new in ALLOWED[old]:
        backend.set_state(new)
        assert backend.state is new
    else:
        with pytest.raises(RuntimeError, match=f"illegal transition {old} -> {new}"):
            backend.set_state(new)
        assert backend.state is old


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (S.ASLEEP, S.READY),  # never READY without a wake and its confirmation
        (S.FAILED, S.WAKING),  # sticky: a failed engine is never woken in place
        (S.FAILED, S.READY),
        (S.STOPPED, S.READY),  # a process is started, then warmed up
        (S.WAKING, S.ASLEEP),
        (S.SLEEPING, S.WAKING),
    ],
)
async def test_the_dangerous_shortcuts_are_illegal(
    made: tuple[Backend, FakeServer], old: BackendState, new: BackendState
) -> None:
    backend, _ = made
    backend.state = old
    with pytest.raises(RuntimeError, match="illegal transition"):
        backend.set_state(new)


async def test_ready_records_its_time_and_memory_asleep_frees_it(
    made: tuple[Backend, FakeServer],
) -> None:
    backend, _ = made
    await asyncio.sleep(12.5)
    backend.mark_failed("x", holds_memory=False)
    backend.state = S.ASLEEP
    backend.set_state(S.WAKING)
    backend.set_state(S.READY)
    assert memory(backend) == (EPOCH + 12.5, True)
    assert backend.failure is None
    backend.set_state(S.SLEEPING)
    backend.set_state(S.ASLEEP)
    assert memory(backend) == (None, False)


async def test_mark_failed_keeps_the_reason_and_clears_the_drain(
    made: tuple[Backend, FakeServer],
) -> None:
    backend = ready(made[0])
    backend.draining = True
    backend.mark_failed("wake failed: boom", holds_memory=True)
    assert (backend.state, backend.failure, backend.holds_memory) == (
        S.FAILED,
        "wake failed: boom",
        True,
    )
    assert not backend.draining


# ----- tickets and leases --------------------------------------------------------------------------
async def test_a_lease_only_on_a_ready_backend(made: tuple[Backend, FakeServer]) -> None:
    backend, _ = made
    for state in (S.UNKNOWN, S.ASLEEP, S.WAKING):
        backend.state = state
        assert backend.try_acquire() is None
    backend.state = S.READY
    assert backend.try_acquire() is not None
    assert backend.leases == 1


async def test_release_is_idempotent_and_marks_the_last_use(
    made: tuple[Backend, FakeServer],
) -> None:
    backend = ready(made[0])
    lease = backend.try_acquire()
    other = backend.try_acquire()
    assert lease is not None
    assert other is not None
    await asyncio.sleep(7)
    lease.release()
    lease.release()
    assert backend.leases == 1
    assert backend.last_used == 7
    other.release()
    assert backend.leases == 0


async def test_tickets_before_a_drain_are_early_and_may_enter_it(
    made: tuple[Backend, FakeServer],
) -> None:
    backend = ready(made[0])
    early = backend.ticket()
    backend.draining = True
    late = backend.ticket()
    assert (early.early, late.early) == (True, False)
    assert backend.early_waiters == 1, "only early tickets hold a drain"
    assert backend.try_acquire() is None, "no new request enters a drain"
    assert backend.try_acquire(late) is None
    assert backend.try_acquire(early) is not None
    assert backend.early_waiters == 0
    assert backend.try_acquire(early) is None, "a ticket admits one request, once"


async def test_dropping_a_ticket_twice_counts_once(made: tuple[Backend, FakeServer]) -> None:
    backend = ready(made[0])
    tickets = [backend.ticket() for _ in range(3)]
    backend.drop_ticket(tickets[0])
    backend.drop_ticket(tickets[0])
    assert backend.early_waiters == 2
    lease = backend.try_acquire(tickets[1])
    assert lease is not None
    backend.drop_ticket(tickets[1])  # the request's `finally` drops a used ticket again
    assert backend.early_waiters == 1


async def test_drain_waits_for_leases_and_early_waiters_not_late_ones(
    made: tuple[Backend, FakeServer],
) -> None:
    backend = ready(made[0])
    lease = backend.try_acquire()
    assert lease is not None
    early = backend.ticket()
    drain = asyncio.create_task(backend.drain())
    await settle()
    late = backend.ticket()
    assert backend.draining
    lease.release()
    await settle()
    assert not drain.done(), "an early waiter is still due its turn"
    served = backend.try_acquire(early)
    assert served is not None
    await settle()
    assert not drain.done(), "its request is still in flight"
    served.release()
    await settle()
    assert drain.done()
    assert not late.early


async def test_drain_is_bounded_by_the_callers_deadline(made: tuple[Backend, FakeServer]) -> None:
    backend = ready(made[0])
    assert backend.try_acquire() is not None
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(30):
            await backend.drain()
    assert loop.time() - t0 == 30
    assert backend.draining, "the caller clears it (Transitions does)"


async def test_wait_changed_wakes_on_every_change(made: tuple[Backend, FakeServer]) -> None:
    backend = ready(made[0])

    def lease_and_release() -> None:
        lease = backend.try_acquire()
        assert lease is not None
        lease.release()

    def drop_a_ticket() -> None:
        backend.drop_ticket(backend.ticket())

    def start_a_sleep() -> None:
        backend.set_state(S.SLEEPING)

    for change in (lease_and_release, drop_a_ticket, start_a_sleep):
        waiter = asyncio.create_task(backend.wait_changed())
        await settle(5)
        assert not waiter.done()
        change()
        await settle(5)
        assert waiter.done(), change.__name__


# ----- its steps, against the fake server ---------------------------------------------------------
async def test_sleep_confirms_and_times_itself_on_the_clock() -> None:
    async with one_backend(sleep_level=2) as (backend, server):
        ready(backend).draining = True
        gate = server.hold("POST", "/sleep")
        sleep = asyncio.create_task(backend.sleep())
        await gate.reached()
        assert backend.state is S.SLEEPING
        assert not backend.draining, "who comes now waits for the next wake, early"
        await asyncio.sleep(2.5)
        gate.open()
        assert await sleep == 2500.0
    assert state(backend) is S.ASLEEP
    assert backend.last_sleep_ms == 2500.0
    assert server.log() == ["POST /sleep?level=2&mode=wait", "GET /is_sleeping"]


async def test_sleep_that_is_not_confirmed_raises_and_stays_sleeping() -> None:
    async with one_backend() as (backend, server):
        server.lie_is_sleeping = False
        with pytest.raises(RuntimeError, match="/is_sleeping is false"):
            await ready(backend).sleep()
    assert backend.state is S.SLEEPING


async def test_wake_that_is_not_confirmed_raises() -> None:
    async with one_backend(asleep=True) as (backend, server):
        backend.state = S.ASLEEP
        server.lie_is_sleeping = True
        with pytest.raises(RuntimeError, match="still true"):
            await backend.wake()
    assert backend.state is S.WAKING
    assert backend.holds_memory, "a half-woken engine holds memory"


async def test_wake_is_timed_and_leaves_the_backend_waking() -> None:
    async with one_backend(asleep=True) as (backend, server):
        backend.state = S.ASLEEP
        gate = server.hold("POST", "/wake_up")
        wake = asyncio.create_task(backend.wake())
        await gate.reached()
        await asyncio.sleep(4)
        gate.open()
        assert await wake == 4000.0
    assert backend.state is S.WAKING, "READY is the switcher's, after the warm-up"


async def test_warm_up_disabled_sends_nothing() -> None:
    async with one_backend(warmup={"enabled": False}) as (backend, server):
        assert await backend.warm_up() == 0.0
    assert server.calls == []
