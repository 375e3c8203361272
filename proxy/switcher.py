"""Switcher: which models are awake on each GPU group, and every change to that.

State machine of one GPU group (all transitions under the group's lock, one at a time):

    start-up:  wait until every member answers /health (never touch memory while one starts)
               -> /is_sleeping of each -> sleep extras beyond max_awake -> reconciled
    request for model T (T not READY):
        join T's single flight (N waiters, 1 switch; a waiter leaving never cancels it)
        flight, under the lock:
          T READY by now?            -> done
          T FAILED?                  -> 503 (sticky until restarted)
          plan (pure): victims = least recently used READY members, enough to leave a slot;
                       a FAILED member that may hold memory blocks the group -> 503
          each victim: drain (no new leases; its early waiters and leases finish),
                       /sleep?level=N&mode=wait, /is_sleeping must say true
          T: wake (level 1 /wake_up; level 2 weights -> reload_weights -> kv_cache ->
             reset_prefix_cache), /is_sleeping must say false, 1-token warm-up -> READY
        any failure: the backend that failed is FAILED; every waiter gets the 503

Owns: one lock + reconciled event per group, one SingleFlight per model, the per-model
waiting counts. Backends are changed only from here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping
from functools import partial

from proxy.backends import Backend, BackendState, ControlError, Lease, WakeTimings
from proxy.backends.backend import NO_SWITCH
from proxy.config import ProxyConfig
from proxy.errors import BackendUnavailableError, QueueFullError
from proxy.gate import SingleFlight
from proxy.metrics import LiveBackend, LiveGroup, Metrics
from proxy.plan import Member, plan_switch

log = logging.getLogger(__name__)
HEALTH_POLL_S = 0.25


class _Group:
    def __init__(self, name: str, max_awake: int, members: list[Backend]) -> None:
        self.name = name
        self.max_awake = max_awake
        self.members = members
        self.lock = asyncio.Lock()
        self.reconciled = asyncio.Event()
        self.phase: str | None = None  # draining | sleeping | waking, while a switch runs
        self._phase_since = 0.0
        self._phase_limit_s = 0.0

    def enter(self, phase: str | None, limit_s: float = 0.0) -> None:
        self.phase, self._phase_since, self._phase_limit_s = phase, time.monotonic(), limit_s

    @property
    def phase_s(self) -> float:
        return time.monotonic() - self._phase_since if self.phase else 0.0

    @property
    def stuck(self) -> bool:
        """The current phase outlived its own timeout (which should have ended it)."""
        return self.phase is not None and self.phase_s > self._phase_limit_s


class Switcher:
    def __init__(
        self, config: ProxyConfig, backends: Mapping[str, Backend], metrics: Metrics
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._backends = backends
        self._limits = config.limits
        by_gpu: dict[str, list[Backend]] = {}
        for b in backends.values():
            by_gpu.setdefault(b.config.gpu, []).append(b)
        self._groups = {
            g: _Group(g, config.gpu(g).max_awake, members) for g, members in by_gpu.items()
        }
        self._flights = {
            name: SingleFlight(partial(self._switch_to, name), name=f"switch:{name}")
            for name in backends
        }
        self.waiting: Counter[str] = Counter()

    async def wait_reconciled(self) -> None:
        for group in self._groups.values():
            await group.reconciled.wait()

    def live(self) -> tuple[list[LiveBackend], list[LiveGroup]]:
        """Snapshot for the metrics collector (read at scrape time)."""
        backends = [
            LiveBackend(b.name, b.config.gpu, b.state, b.leases, self.waiting[b.name])
            for b in self._backends.values()
        ]
        return backends, [LiveGroup(g.name, g.lock.locked()) for g in self._groups.values()]

    def groups(self) -> list[_Group]:
        return list(self._groups.values())

    def group_of(self, name: str) -> _Group:
        return self._groups[self._backends[name].config.gpu]

    def switch_in_progress(self, gpu: str) -> bool:
        return self._groups[gpu].lock.locked()

    # ----- requests ------------------------------------------------------------------------------
    async def lease(self, name: str) -> tuple[Lease, WakeTimings]:
        """A lease on a READY backend; may wait for a switch. 429 when the queue is full, 503
        when the wait or the switch fails. Cancelling the caller only leaves the queue."""
        backend = self._backends[name]
        if (lease := backend.try_acquire()) is not None:
            return lease, NO_SWITCH
        if self.waiting[name] >= self._limits.queue_size:
            raise QueueFullError(
                f"{self.waiting[name]} requests already wait for model {name!r}; retry later",
                retry_after_s=self._limits.retry_after_s,
            )
        self.waiting[name] += 1
        ticket = backend.ticket()
        timings = NO_SWITCH
        try:
            async with asyncio.timeout(self._limits.queue_timeout_s):
                while (lease := backend.try_acquire(ticket)) is None:
                    if backend.state is BackendState.FAILED:
                        raise self._failed(backend)
                    if backend.state is BackendState.READY:
                        # READY but draining, and this request came after the drain began:
                        # wait for that switch to move it, then join the switch back.
                        await backend.wait_changed()
                        continue
                    timings = await self._flights[name]()
            return lease, timings
        except TimeoutError:
            raise BackendUnavailableError(
                f"model {name!r} was not ready within {self._limits.queue_timeout_s:g}s",
                retry_after_s=self._limits.retry_after_s,
            ) from None
        finally:
            backend.drop_ticket(ticket)
            self.waiting[name] -= 1

    def _failed(self, backend: Backend) -> BackendUnavailableError:
        return BackendUnavailableError(
            f"model {backend.name!r} is unavailable: {backend.failure}; it needs a restart",
            retry_after_s=self._limits.retry_after_s,
        )

    # ----- the switch ------------------------------------------------------------------------------
    async def _switch_to(self, name: str) -> WakeTimings:
        flight_started = time.monotonic()
        target = self._backends[name]
        group = self.group_of(name)
        await group.reconciled.wait()
        if target.state is BackendState.READY:
            # made READY by start-up reconciliation: its early waiters must not wait for the
            # lock, which a switch draining this very backend (for them) may hold
            return NO_SWITCH
        async with group.lock:
            if target.is_ready():  # woken by a flight that held the lock before us
                return NO_SWITCH
            if target.state is BackendState.FAILED:
                raise self._failed(target)
            members = [Member(b.name, b.state, b.holds_memory, b.last_used) for b in group.members]
            plan = plan_switch(name, members, group.max_awake)
            if plan.blocked_by:
                raise BackendUnavailableError(
                    f"GPU group {group.name!r} is blocked: {', '.join(plan.blocked_by)} failed and may "
                    "still hold GPU memory; restart it",
                    retry_after_s=self._limits.retry_after_s,
                )
            started = time.monotonic()
            victims = "+".join(plan.victims) or "none"
            try:
                sleep_ms = 0.0
                for victim in plan.victims:
                    sleep_ms += await self._put_to_sleep(self._backends[victim], group)
                wake_ms, warmup_ms = await self._wake(target, group)
            except BackendUnavailableError:
                self._metrics.switches.labels(victims, name, "failed").inc()
                raise
            finally:
                group.enter(None)
                self._metrics.switching_seconds.labels(group.name).inc(time.monotonic() - started)
            target.last = WakeTimings(sleep_ms=sleep_ms, wake_ms=wake_ms, warmup_ms=warmup_ms)
            target.set_state(BackendState.READY)
            self._metrics.switches.labels(victims, name, "ok").inc()
            self._metrics.switch_seconds.labels(victims, name).observe(
                time.monotonic() - flight_started
            )
            total_ms = round((time.monotonic() - started) * 1000, 1)
            log.info(
                "switched %s -> %s in %.0f ms (sleep %.0f, wake %.0f, warm-up %.0f)",
                victims,
                name,
                total_ms,
                sleep_ms,
                wake_ms,
                warmup_ms,
                extra={
                    "event": "switch",
                    "from_model": victims,
                    "to_model": name,
                    "gpu": group.name,
                    "switch_ms": total_ms,
                    "sleep_ms": sleep_ms,
                    "wake_ms": wake_ms,
                    "warmup_ms": warmup_ms,
                },
            )
            return target.last

    async def _put_to_sleep(self, victim: Backend, group: _Group) -> float:
        t = victim.config.timeouts
        group.enter("draining", t.drain_s)
        try:
            async with asyncio.timeout(t.drain_s):
                await victim.drain()
        except TimeoutError:
            victim.draining = False
            raise BackendUnavailableError(
                f"model {victim.name!r} still had requests in flight after {t.drain_s:g}s; not switching",
                retry_after_s=self._limits.retry_after_s,
            ) from None
        group.enter("sleeping", t.sleep_s)
        try:
            async with asyncio.timeout(t.sleep_s):
                ms = await victim.sleep()
            self._metrics.sleep_seconds.labels(victim.name, str(victim.config.sleep_level)).observe(
                ms / 1000
            )
            return ms
        except (TimeoutError, ControlError, RuntimeError) as exc:
            reason = f"sleep failed: {_describe(exc, t.sleep_s)}"
            victim.mark_failed(reason, holds_memory=not await self._confirmed_asleep(victim))
            raise BackendUnavailableError(
                f"could not put {victim.name!r} to sleep ({reason})",
                retry_after_s=self._limits.retry_after_s,
            ) from exc

    async def _wake(self, target: Backend, group: _Group) -> tuple[float, float]:
        t = target.config.timeouts
        level = str(target.config.sleep_level)
        group.enter("waking", t.wake_s)
        started = time.monotonic()
        try:
            async with asyncio.timeout(t.wake_s):
                wake_ms = await target.wake()
            self._metrics.wake_seconds.labels(target.name, level).observe(wake_ms / 1000)
        except (TimeoutError, ControlError, RuntimeError) as exc:
            # a failed wake can leave memory mapped (vLLM 0.26 does not roll back): never trust it
            self._metrics.wake_failures.labels(target.name, _failure_kind(exc)).inc()
            reason = f"wake failed: {_describe(exc, t.wake_s)}"
            target.mark_failed(reason, holds_memory=True)
            raise BackendUnavailableError(
                f"could not wake {target.name!r} ({reason})",
                retry_after_s=self._limits.retry_after_s,
            ) from exc
        try:
            async with asyncio.timeout(max(t.wake_s - (time.monotonic() - started), 0.001)):
                warmup_ms = await target.warm_up()
            if target.config.warmup.enabled:
                self._metrics.warmup_seconds.labels(target.name).observe(warmup_ms / 1000)
        except (TimeoutError, ControlError) as exc:
            self._metrics.wake_failures.labels(target.name, "warmup").inc()
            reason = f"warm-up failed: {_describe(exc, t.wake_s)}"
            released = await self._try_sleep(target)
            target.mark_failed(reason, holds_memory=not released)
            raise BackendUnavailableError(
                f"could not warm up {target.name!r} ({reason})",
                retry_after_s=self._limits.retry_after_s,
            ) from exc
        return wake_ms, warmup_ms

    async def _confirmed_asleep(self, backend: Backend) -> bool:
        try:
            async with asyncio.timeout(backend.config.timeouts.control_s):
                return await backend.control.is_sleeping()
        except (TimeoutError, ControlError):
            return False

    async def _try_sleep(self, backend: Backend) -> bool:
        """Best effort after a failed warm-up (the wake itself succeeded): free the memory."""
        try:
            async with asyncio.timeout(backend.config.timeouts.sleep_s):
                await backend.control.sleep(backend.config.sleep_level)
        except (TimeoutError, ControlError):
            return False
        return await self._confirmed_asleep(backend)

    # ----- start-up ---------------------------------------------------------------------------------
    async def reconcile(self) -> None:
        """Adopt the backends as they are; at most max_awake stay awake per group."""
        async with asyncio.TaskGroup() as tg:
            for group in self._groups.values():
                tg.create_task(self._reconcile_group(group), name=f"reconcile:{group.name}")

    async def _reconcile_group(self, group: _Group) -> None:
        """Decide from /is_sleeping before anything is READY, so that no lease (and no early
        waiter a drain would wait for) exists on a backend this start-up puts to sleep."""
        try:
            await self._reconcile_locked(group)
        finally:
            group.reconciled.set()  # whatever happened, waiters proceed (to READY or to a 503)

    async def _reconcile_locked(self, group: _Group) -> None:
        async with group.lock:
            await asyncio.gather(*(self._wait_up(b) for b in group.members))
            asleep: dict[str, bool] = {}
            for b in group.members:
                if b.state is BackendState.UNKNOWN and (state := await self._probe(b)) is not None:
                    asleep[b.name] = state
            awake = [b for b in group.members if asleep.get(b.name) is False]
            for extra in awake[group.max_awake :]:
                log.info(
                    "start-up: %s is awake beyond max_awake=%d of %s; putting it to sleep",
                    extra.name,
                    group.max_awake,
                    group.name,
                )
                try:
                    async with asyncio.timeout(extra.config.timeouts.sleep_s):
                        await extra.sleep()
                except (TimeoutError, ControlError, RuntimeError) as exc:
                    reason = (
                        f"sleep at start-up failed: {_describe(exc, extra.config.timeouts.sleep_s)}"
                    )
                    extra.mark_failed(reason, holds_memory=not await self._confirmed_asleep(extra))
            for b in group.members:
                if b.state is BackendState.UNKNOWN:
                    b.set_state(BackendState.ASLEEP if asleep[b.name] else BackendState.READY)
                log.info("start-up: %s is %s", b.name, b.state)

    async def _wait_up(self, backend: Backend) -> None:
        """Poll /health until the backend is up. One that never comes up is FAILED and *may hold
        memory*: vLLM allocates GPU memory before it listens, so it blocks its group."""
        t = backend.config.timeouts
        deadline = time.monotonic() + t.start_s
        while True:
            try:
                async with asyncio.timeout(t.control_s):
                    if await backend.control.health():
                        return
            except TimeoutError:
                pass
            if time.monotonic() > deadline:
                backend.mark_failed(
                    f"not reachable within {t.start_s:g}s of start-up", holds_memory=True
                )
                return
            await asyncio.sleep(HEALTH_POLL_S)

    async def _probe(self, backend: Backend) -> bool | None:
        """/is_sleeping of a backend at start-up; None (and FAILED) if it cannot say."""
        try:
            async with asyncio.timeout(backend.config.timeouts.control_s):
                return await backend.control.is_sleeping()
        except (TimeoutError, ControlError) as exc:
            reason = f"/is_sleeping failed at start-up: {_describe(exc, backend.config.timeouts.control_s)}"
            backend.mark_failed(reason, holds_memory=True)
            return None

    async def close(self) -> None:
        for flight in self._flights.values():
            await flight.cancel()


def _failure_kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "oom" if "out of memory" in str(exc) else "error"


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout_s:g}s"
    return str(exc) or type(exc).__name__
