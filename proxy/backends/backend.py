"""Backend: one model's state, its leases, and who may still take one while it drains.

Fields (each changed between two awaits, never across one):
  state          see state.py
  leases         requests currently forwarded to the backend (streams included)
  draining       a switch drains it before sleep: no new leases, except for...
  early_waiters  requests that queued for this model *before* the drain began: they are
                 served first (invariant 3), so a model that just woke is never slept
                 under the very requests it was woken for. A request that came late
                 (during the drain) re-queues as early once the drain is over
  holds_memory   False only when the backend is known to hold no more than its sleep
                 residual; a FAILED backend that may still hold GPU memory blocks wakes
                 in its group (waking next to it could wedge a neighbour, as on an H100)
  failure        why it is FAILED

Who writes them. The switching core owns every state change, under the GPU group's lock:
  - requests, through this class's own methods: leases, tickets (early_waiters), last_used;
  - the switching core, under the group's lock: switching/transitions.py (draining, and state
    through sleep()/wake()/mark_failed()), switching/execute.py (READY after a wake or start,
    the measured costs), switching/startup.py (every member at reconciliation), and the
    supervisor's start()/kill() it calls (STARTING, holds_memory=False after a kill);
  - Switcher.report_exit, when the supervisor reports that a process died: synchronous (no
    await, so it never splits a step's read and write), applied at once to a backend in no
    memory step, else after the step (switching/execute.py);
  - backends/supervisor.py's stop_all: STOPPED at shutdown, after the switching core closed;
  - switching/operator.py, under the group's lock, for an operator's reset of a FAILED
    attached backend it checked again and confirmed asleep (ASLEEP, `failure` cleared);
  - start-up's probe (switching/startup.py): `max_model_len`, from the backend's /v1/models.
Routes, status and metrics only read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from proxy.backends.control import VllmControl
from proxy.backends.state import ALLOWED, BackendState
from proxy.clock import Clock, SystemClock
from proxy.config import ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WakeTimings:
    """What one switch cost, in ms (0 when nothing had to happen)."""

    sleep_ms: float = 0.0
    wake_ms: float = 0.0
    warmup_ms: float = 0.0


NO_SWITCH = WakeTimings()


class Ticket:
    """A request's place in line for one backend."""

    __slots__ = ("early", "used")

    def __init__(self, early: bool) -> None:
        self.early = early
        self.used = False


class Lease:
    """Permission to forward one request; `release()` is idempotent. `on_revoke` is how the
    response streaming under it is ended early (a switch held it past `max_hold_s`)."""

    __slots__ = ("_backend", "_released", "on_revoke")

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._released = False
        self.on_revoke: Callable[[str], None] | None = None

    @property
    def backend(self) -> Backend:
        return self._backend

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._backend._release(self)


class Backend:
    def __init__(
        self, config: ModelConfig, control: VllmControl, clock: Clock | None = None
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.name = config.name
        self.control = control
        self.state = BackendState.UNKNOWN
        self.draining = False
        self.early_waiters = 0
        self.holds_memory = True
        self.failure: str | None = None
        self.awake_since: float | None = None
        self.ready_at: float | None = None  # monotonic, when it last became READY
        self.last_used = 0.0
        # measured moving averages (None until the first sleep / wake), read by the policy
        self.sleep_cost_s: float | None = None
        self.wake_cost_s: float | None = None  # wake or start, plus warm-up
        self.listeners: list[Callable[[], None]] = []  # told of every change (its GPU group)
        self._live: set[Lease] = set()  # the leases not released yet
        self.paused_since: float | None = None  # preempted with requests in flight: since when
        self.last = WakeTimings()  # what the switch that last woke this backend cost
        self.last_sleep_ms: float | None = None
        self.last_wake_ms: float | None = None
        self.last_warmup_ms: float | None = None
        self.max_model_len: int | None = None  # the backend's, read by start-up's probe
        self._changed = asyncio.Event()

    # ----- transitions -------------------------------------------------------------------------
    def set_state(self, new: BackendState) -> None:
        if new is not self.state and new not in ALLOWED[self.state]:
            raise RuntimeError(f"{self.name}: illegal transition {self.state} -> {new}")
        self.state = new
        if new is BackendState.READY:
            self.awake_since = self.clock.wall()
            self.ready_at = self.clock.monotonic()
            self.paused_since = None  # its paused requests run again
            self.holds_memory = True
            self.failure = None
        elif new is BackendState.STARTING:
            self.holds_memory = True  # vLLM allocates GPU memory before it answers /health
        elif new in (BackendState.STOPPED, BackendState.ASLEEP):
            self.awake_since = None
            self.holds_memory = False
        self._notify()

    def recovered(self) -> None:
        """An operator's reset: a FAILED backend checked again and confirmed asleep."""
        self.failure = None
        self.set_state(BackendState.ASLEEP)

    def mark_failed(self, reason: str, *, holds_memory: bool) -> None:
        log.error("backend %s failed: %s", self.name, reason)
        self.failure = reason
        self.holds_memory = holds_memory
        self.draining = False
        self.set_state(BackendState.FAILED)

    # ----- leases --------------------------------------------------------------------------------
    def ticket(self) -> Ticket:
        early = not self.draining
        if early:
            self.early_waiters += 1
        return Ticket(early)

    def drop_ticket(self, ticket: Ticket) -> None:
        if ticket.early and not ticket.used:
            ticket.used = True
            self.early_waiters -= 1
            self._notify()

    def try_acquire(self, ticket: Ticket | None = None) -> Lease | None:
        """Sync check-and-take: a lease if READY and this request may still enter."""
        if self.state is not BackendState.READY:
            return None
        if self.draining and not (ticket is not None and ticket.early and not ticket.used):
            return None
        if ticket is not None:
            self.drop_ticket(ticket)
        self.last_used = self.clock.monotonic()
        lease = Lease(self)
        self._live.add(lease)
        return lease

    def _release(self, lease: Lease) -> None:
        self._live.discard(lease)
        self.last_used = self.clock.monotonic()
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        for listener in self.listeners:
            listener()

    def notify_changed(self) -> None:
        """Tell waiters and the group that something they read (holds_memory) changed."""
        self._notify()

    def measured(self, *, sleep_s: float | None = None, wake_s: float | None = None) -> None:
        """Fold one measured sleep or wake (+ warm-up) into the moving averages."""
        if sleep_s is not None:
            self.sleep_cost_s = ewma(self.sleep_cost_s, sleep_s)
        if wake_s is not None:
            self.wake_cost_s = ewma(self.wake_cost_s, wake_s)

    def _ms_since(self, t0: float) -> float:
        return round((self.clock.monotonic() - t0) * 1000, 3)

    def is_ready(self) -> bool:
        return self.state is BackendState.READY

    async def wait_changed(self) -> None:
        """Until the next change of state, leases or waiters."""
        await self._changed.wait()

    @property
    def leases(self) -> int:
        """Requests currently forwarded to the backend (streams included)."""
        return len(self._live)

    @property
    def paused(self) -> int:
        """Requests paused in it by a preemption, waiting for its next wake."""
        return self.leases if self.paused_since is not None else 0

    @property
    def idle(self) -> bool:
        return self.leases == 0 and self.early_waiters == 0

    def revoke_leases(self, reason: str) -> int:
        """Ask every response still streaming under a lease to end now (`reason` is what its
        client is told). Returns how many were asked; each releases its lease as it ends."""
        asked = 0
        for lease in list(self._live):
            if lease.on_revoke is not None:
                lease.on_revoke(reason)
                asked += 1
        return asked

    def end_drain(self) -> None:
        """The drain gave up (its switch was aborted): requests that came during it may enter."""
        self.draining = False
        self._notify()

    async def drain(self) -> None:
        """Refuse late requests and wait until leases and early waiters are gone.

        Cancelled by the caller's deadline; the caller then clears `draining`.
        """
        self.draining = True
        while not self.idle:
            await self._changed.wait()

    # ----- memory-changing operations (Switcher only, under the group lock) -----------------------
    async def sleep(self, *, preempt: bool = False) -> float:
        """Drained already (or `preempt`: its requests pause, mode=keep); /sleep then confirm
        with /is_sleeping. Returns ms."""
        t0 = self.clock.monotonic()
        self.draining = False  # the drain is over: who comes now waits for the next wake, early
        self.set_state(BackendState.SLEEPING)
        if preempt:
            self.paused_since = self.clock.monotonic()
        await self.control.sleep(self.config.sleep_level, keep=preempt)
        if not await self.control.is_sleeping():
            raise RuntimeError("/sleep answered 200 but /is_sleeping is false")
        self.set_state(BackendState.ASLEEP)
        self.last_sleep_ms = self._ms_since(t0)
        return self.last_sleep_ms

    async def wake(self) -> float:
        """Wake (staged for level 2) and confirm with /is_sleeping. Returns ms; not READY yet."""
        self.set_state(BackendState.WAKING)
        self.holds_memory = True
        t0 = self.clock.monotonic()
        await self.control.wake(self.config.sleep_level)
        if await self.control.is_sleeping():
            raise RuntimeError("/wake_up answered 200 but /is_sleeping is still true")
        self.last_wake_ms = self._ms_since(t0)
        return self.last_wake_ms

    async def warm_up(self) -> float:
        """The 1-token warm-up request (if enabled). Returns ms."""
        if not self.config.warmup.enabled:
            return 0.0
        t0 = self.clock.monotonic()
        await self.control.warm_up()
        self.last_warmup_ms = self._ms_since(t0)
        return self.last_warmup_ms


COST_WEIGHT = 0.3  # of the newest measurement in the moving average


def ewma(average: float | None, sample: float) -> float:
    return sample if average is None else (1 - COST_WEIGHT) * average + COST_WEIGHT * sample
