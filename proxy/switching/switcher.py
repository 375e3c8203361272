"""Switcher: which models are awake on each GPU group, and every change to that.

One owner per GPU group - the group's lock. Every change of a member's state happens in a
method that holds it (a switch, idle sleep, start-up and the steps they run: transitions.py,
execute.py, startup.py), or in `report_exit`, which is synchronous and so never splits what a
step reads from what it writes. Requests only take and release leases (Backend's own methods).

A GPU group, one decision at a time:

    start-up:  wait until every member answers /health (never touch memory while one starts)
               -> /is_sleeping of each -> reset half-known level-2 members -> sleep extras
               beyond max_awake -> start eager supervised ones -> reconciled
    request for model T (T not READY):
        enter T's demand (its arrival time), join T's single flight (N waiters, 1 switch; a
        waiter leaving never cancels it)
        flight, under the lock, until it acts:
          T READY by now?            -> done
          T FAILED for good?         -> 503 (sticky until restarted)
          policy.decide (pure, over a snapshot of the group and its demand):
            target = the waiting model with the highest priority, then the oldest request;
            a FAILED member that may hold memory blocks its wake -> 503
            T is the target and may switch now -> run it (execute.py): each victim drained
              (no new leases; its early waiters and leases finish), /sleep?level=N&mode=wait,
              /is_sleeping true; T woken (level 2 in stages), /is_sleeping false, warm-up,
              READY - or T first and the victims afterwards when declared memory fits
            else hold: the lock is released until the group changes (a lease ends, a request
              waits or leaves, a state changes) or the decision's recheck_at
        any failure: the backend that failed is FAILED; victims put to sleep for it are woken
                     back if the group has room (a killed target holds none); then every
                     waiter gets the 503

Owns: one GpuGroup per GPU (its lock, reconciled event and phase live there), one
SingleFlight per model, the demand (`Demand`: who waits for which model, since when), the
SwitchRunner and the SwitchCosts it measures (costs.py). See backends/backend.py for every writer of backend state.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from functools import partial

from proxy.backends import Backend, BackendState, Lease, WakeTimings
from proxy.backends.backend import NO_SWITCH
from proxy.backends.gpu_memory import GpuMemory, open_gpu_memory
from proxy.backends.supervisor import Supervisor
from proxy.clock import Clock, SystemClock
from proxy.config import GpuConfig, ProxyConfig
from proxy.errors import BackendUnavailableError, QueueFullError
from proxy.observability.events import Events, state_changes
from proxy.observability.metrics import LiveBackend, LiveGroup, Metrics
from proxy.switching.costs import SwitchCosts
from proxy.switching.demand import Demand
from proxy.switching.execute import SwitchRunner, apply_exit
from proxy.switching.group import GpuGroup
from proxy.switching.policy import Decision, decide
from proxy.switching.single_flight import SingleFlight
from proxy.switching.transitions import Transitions

log = logging.getLogger(__name__)


class Switcher:
    def __init__(
        self,
        config: ProxyConfig,
        backends: Mapping[str, Backend],
        metrics: Metrics,
        supervisor: Supervisor,
        clock: Clock | None = None,
        gpu_memory: Callable[[GpuConfig], GpuMemory | None] = open_gpu_memory,
        events: Events | None = None,
    ) -> None:
        self.clock = clock or SystemClock()
        self.events = events or Events()
        self._supervisor = supervisor
        self._config = config
        self._metrics = metrics
        self._backends = backends
        self._limits = config.limits
        by_gpu: dict[str, list[Backend]] = {}
        for b in backends.values():
            by_gpu.setdefault(b.config.gpu, []).append(b)
        self._steps = Transitions(config.limits, metrics, supervisor, self.clock)
        self._demand = Demand(backends, self.clock)
        self._groups = {
            g: GpuGroup(g, config.gpu(g).max_awake, members, self.clock)
            for g, members in by_gpu.items()
        }
        self._flights = {
            name: SingleFlight(partial(self._switch_to, name), name=f"switch:{name}")
            for name in backends
        }
        self._costs = SwitchCosts()
        self._runner = SwitchRunner(
            self._steps, metrics, self.clock, backends, self._costs, self.events
        )
        self._resumes: set[asyncio.Task[None]] = set()
        supervisor.on_exit = self.report_exit
        supervisor.memory_of = lambda b: self.group_of(b.name).memory
        for b in backends.values():
            b.listeners.append(state_changes(self.events, b))
        for group in self._groups.values():
            group.max_hold_s = config.gpu(group.name).scheduling.max_hold_s
            group.memory = gpu_memory(config.gpu(group.name))

    @property
    def steps(self) -> Transitions:
        """The memory-changing steps, for start-up and the operator (under the group's lock)."""
        return self._steps

    @property
    def waiting(self) -> Counter[str]:
        """Requests waiting per model (read-only view for metrics, status and tests)."""
        return self._demand.waiting

    async def wait_reconciled(self) -> None:
        for group in self._groups.values():
            await group.reconciled.wait()

    def live(self) -> tuple[list[LiveBackend], list[LiveGroup]]:
        """Snapshot for the metrics collector (read at scrape time)."""
        backends = [
            LiveBackend(b.name, b.config.gpu, b.state, b.leases, self.waiting[b.name])
            for b in self._backends.values()
        ]
        # the lock is also held by start-up (minutes with several eager backends): not a switch
        groups = [
            LiveGroup(g.name, g.lock.locked() and g.reconciled.is_set())
            for g in self._groups.values()
        ]
        return backends, groups

    def servable(self) -> list[str]:
        """Models a request could be served by now: READY ones, and those that may be woken or
        started - not FAILED for good, and not in a group blocked for them (a failed member
        that may still hold memory). Read by /ready: a proxy that can serve nothing is not."""
        names = []
        for group in self._groups.values():
            for b in group.members:
                if b.state is BackendState.READY:
                    names.append(b.name)
                elif b.state is BackendState.UNKNOWN or (
                    b.state is BackendState.FAILED and self._supervisor.restart_wait(b) is None
                ):
                    continue
                elif not group.plan(b.name).blocked_by:
                    names.append(b.name)
        return names

    def groups(self) -> list[GpuGroup]:
        return list(self._groups.values())

    def group_of(self, name: str) -> GpuGroup:
        return self._groups[self._backends[name].config.gpu]

    # ----- requests ------------------------------------------------------------------------------
    def lease_now(self, name: str) -> tuple[Lease, WakeTimings] | None:
        """A lease at once if the model is READY and not draining (no switch, no waiting), and
        - under the `naive` policy - no request of another model of its group waits."""
        group = self.group_of(name)
        if self._strict_order(group) and self._demand.older_elsewhere(name, None, group):
            return None
        backend = self._backends[name]
        idle, last_used = self._demand.idle(backend), backend.last_used
        lease = backend.try_acquire()
        if lease is None:
            return None
        if idle:  # an arrival at an idle model, served at once (a queued one: `lease`)
            self._demand.arrived(name, last_used)
        return lease, NO_SWITCH

    def _strict_order(self, group: GpuGroup) -> bool:
        """`naive`: requests start in arrival order across the group (no overtaking, no join)."""
        return self._config.gpu(group.name).scheduling.policy == "naive"

    async def lease(self, name: str) -> tuple[Lease, WakeTimings]:
        """A lease on a READY backend; may wait for a switch. 429 when the queue is full, 503
        when the wait or the switch fails. Cancelling the caller only leaves the queue."""
        if (now := self.lease_now(name)) is not None:
            return now
        backend = self._backends[name]
        group = self.group_of(name)
        if self.waiting[name] >= self._limits.queue_size:
            raise QueueFullError(
                f"{self.waiting[name]} requests already wait for model {name!r}; retry later",
                retry_after_s=self._limits.retry_after_s,
            )
        if self._demand.idle(backend):
            self._demand.arrived(name, backend.last_used)
        arrived = self._demand.enter(name, group)
        ticket = backend.ticket()
        timings = NO_SWITCH
        try:
            async with asyncio.timeout(self._limits.queue_timeout_s):
                while True:
                    if self._strict_order(group) and self._demand.older_elsewhere(
                        name, arrived, group
                    ):  # naive: an older request of another model starts first; holding
                        # no early ticket meanwhile (a drain would wait for it, and it for that)
                        backend.drop_ticket(ticket)
                        await group.wait_changed(None)
                        ticket = backend.ticket()
                        continue
                    if (lease := backend.try_acquire(ticket)) is not None:
                        break
                    if (
                        backend.state is BackendState.FAILED
                        and self._supervisor.restart_wait(backend) != 0
                    ):
                        raise self._failed(backend)
                    if backend.state is BackendState.READY:
                        # READY but draining, and this request came after the drain began:
                        # wait for that switch to move it, then join the switch back.
                        await backend.wait_changed()
                        continue
                    if not ticket.early and not backend.draining:
                        # the drain it came too late for is over: it now waits for the next
                        # wake, and is first in line for it (else a switch queued behind that
                        # wake could sleep the model under it again, turn after turn)
                        ticket = backend.ticket()
                    timings = await self._flights[name]()
            return lease, timings
        except TimeoutError:
            raise BackendUnavailableError(
                f"model {name!r} was not ready within {self._limits.queue_timeout_s:g}s",
                retry_after_s=self._limits.retry_after_s,
            ) from None
        finally:
            backend.drop_ticket(ticket)
            self._demand.leave(name, arrived, group)

    def _failed(self, backend: Backend) -> BackendUnavailableError:
        wait = self._supervisor.restart_wait(backend)
        if wait is None:
            fix = (
                f"POST /admin/models/{backend.name}/restart starts it again"
                if self._supervisor.supervises(backend.name)
                else f"fix its engine, then POST /admin/models/{backend.name}/reset"
            )
            return BackendUnavailableError(
                f"model {backend.name!r} is unavailable: {backend.failure}; {fix}",
                retry_after_s=self._limits.retry_after_s,
            )
        return BackendUnavailableError(
            f"model {backend.name!r} is unavailable: {backend.failure}; restarting it in {wait:.0f}s",
            retry_after_s=max(wait, 1.0),
        )

    # ----- the switch ------------------------------------------------------------------------------
    async def _switch_to(self, name: str) -> WakeTimings:
        """One flight for `name`: ask the policy, under the group's lock, until it picks `name`
        and says switch now; hold (lock released) until the group changes or the decision's
        `recheck_at`. Only the chosen target's flight acts, so flights of one group agree."""
        flight_started = self.clock.monotonic()
        target = self._backends[name]
        group = self.group_of(name)
        await group.reconciled.wait()
        held: str | None = None
        due: float | None = None  # the recheck time the last hold waited for, once it passed
        while True:
            if target.state is BackendState.READY:
                # made READY by start-up or by a wake-first switch: its waiters must not wait for
                # the lock, which a switch draining this very backend (for them) may hold
                return NO_SWITCH
            async with group.lock:
                if target.is_ready():  # woken by a flight that held the lock before us
                    return NO_SWITCH
                if (
                    target.state is BackendState.FAILED
                    and self._supervisor.restart_wait(target) != 0
                ):
                    raise self._failed(target)
                if self.waiting[name] == 0 and target.paused == 0:
                    return NO_SWITCH  # a resume flight whose paused requests all left
                # a timer may fire a hair before its float deadline (a + (b - a) != b): the
                # recheck it waited for counts as reached, or the hold would spin at that instant
                now = max(self.clock.monotonic(), due or 0.0)
                gpu = self._config.gpu(group.name)
                view = self._demand.view(group, gpu, self._can_start, self._costs)
                decision = decide(view, now)
                if decision.target == name:
                    if decision.blocked_by:
                        raise BackendUnavailableError(
                            f"GPU group {group.name!r} is blocked: {', '.join(decision.blocked_by)} "
                            "failed and may still hold GPU memory; POST /admin/models/NAME/restart "
                            "(supervised) or fix its engine and POST /admin/models/NAME/reset",
                            retry_after_s=self._limits.retry_after_s,
                        )
                    if decision.switch_now:
                        self._decided(group, decision)
                        timings = await self._runner.switch(target, group, decision, flight_started)
                        for paused in decision.preempt:
                            self._resume_later(paused)
                        return timings
                    if decision.reason != held:  # count each hold once, not each re-decision
                        held = decision.reason
                        self._decided(group, decision)
                wait_s = None if decision.recheck_at is None else decision.recheck_at - now
            timed_out = not await group.wait_changed(wait_s)
            due = decision.recheck_at if timed_out else None

    def _decided(self, group: GpuGroup, decision: Decision) -> None:
        self._metrics.decisions.labels(group.name, decision.reason).inc()
        self.events.publish(
            "decision",
            gpu=group.name,
            reason=decision.reason,
            target=decision.target,
            victims=list(decision.victims),
            switch=decision.switch_now,
            waiting=list(decision.waiting),
        )

    def _resume_later(self, name: str) -> None:
        """A preempted model's paused requests hold leases but wait in no queue: a flight of
        their own brings the model back when the policy says it is their turn."""

        async def resume() -> None:
            try:
                await self._flights[name]()
            except BackendUnavailableError as exc:  # its paused streams end with the backend
                log.warning("could not resume %s after its preemption: %s", name, exc.message)

        task = asyncio.create_task(resume(), name=f"resume:{name}")
        self._resumes.add(task)
        task.add_done_callback(self._resumes.discard)

    def _can_start(self, backend: Backend) -> bool:
        return self._supervisor.restart_wait(backend) == 0

    def report_exit(self, backend: Backend, code: int) -> None:
        """The supervisor's exit watcher: `backend`'s process is gone, and its memory with it.
        Applied at once - synchronous, so it never interleaves with a step's read and write -
        unless a switch step has the backend in a memory call right now (sleeping, waking,
        starting): that step fails on its next call, and its outcome is corrected after it. A
        draining victim is marked at once; the step skips its sleep (nothing left to free)."""
        if not apply_exit(backend, code):
            self._runner.exited(backend, code)

    # ----- idle sleep -----------------------------------------------------------------------------
    async def sleep_idle(self, now: float) -> list[str]:
        """Put READY models unused for their `idle_sleep_s` to sleep (never while a switch runs in
        their group, never with requests in flight or waiting). Returns the names slept."""
        slept = []
        for b in self._backends.values():
            ttl = b.config.idle_sleep_s
            if ttl is None or not self._idle_for(b, now, ttl):
                continue
            group = self.group_of(b.name)
            if group.lock.locked():
                continue
            async with group.lock:
                if not self._idle_for(b, self.clock.monotonic(), ttl):  # re-check after the await
                    continue
                try:
                    await self._steps.put_to_sleep(b, group)
                    slept.append(b.name)
                    log.info(
                        "put %s to sleep after %gs idle",
                        b.name,
                        ttl,
                        extra={"event": "idle_sleep", "model": b.name},
                    )
                except BackendUnavailableError:
                    log.exception("idle sleep of %s failed", b.name)
                finally:
                    group.enter(None)
        return slept

    def _idle_for(self, b: Backend, now: float, ttl: float) -> bool:
        return (
            b.state is BackendState.READY
            and b.leases == 0
            and self.waiting[b.name] == 0
            and now - max(b.last_used, b.ready_at or 0.0) >= ttl  # never from 0: from its wake
        )

    # ----- used by start-up (proxy/switching/startup.py), under the group's lock ------------------------
    async def reset_now(self, backend: Backend) -> bool:
        """Start-up only: wake a level-2 backend in full and sleep it again (known state)."""
        return await self._steps.reset_level2(backend)

    async def sleep_now(self, backend: Backend) -> bool:
        """Put a backend without leases to sleep; False (and FAILED) if that failed."""
        return await self._steps.sleep_undrained(backend)

    async def start_now(self, backend: Backend, group: GpuGroup) -> bool:
        """Start a supervised backend and warm it up; it is READY afterwards unless this failed."""
        try:
            await self._steps.start(backend, group)
        except BackendUnavailableError:
            log.exception("start-up: could not start %s", backend.name)
            return False
        finally:
            group.enter(None)
        backend.set_state(BackendState.READY)
        return True

    async def close(self) -> None:
        for task in list(self._resumes):
            task.cancel()
        await asyncio.gather(*self._resumes, return_exceptions=True)
        for flight in self._flights.values():
            await flight.cancel()
        await self._runner.close()
