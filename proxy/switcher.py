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
from proxy.supervisor import StartError, Supervisor

log = logging.getLogger(__name__)
STUCK_GRACE_S = 60.0


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
        """The current phase outlived its own timeout (which should have ended it) by more than
        the cleanup a failure may still do in that phase (confirming, best-effort sleep, kill)."""
        return self.phase is not None and self.phase_s > self._phase_limit_s + STUCK_GRACE_S


class Switcher:
    def __init__(
        self,
        config: ProxyConfig,
        backends: Mapping[str, Backend],
        metrics: Metrics,
        supervisor: Supervisor,
    ) -> None:
        self._supervisor = supervisor
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
        # the lock is also held by start-up (minutes with several eager backends): not a switch
        groups = [
            LiveGroup(g.name, g.lock.locked() and g.reconciled.is_set())
            for g in self._groups.values()
        ]
        return backends, groups

    def groups(self) -> list[_Group]:
        return list(self._groups.values())

    def group_of(self, name: str) -> _Group:
        return self._groups[self._backends[name].config.gpu]

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
        wait = self._supervisor.restart_wait(backend)
        if wait is None:
            return BackendUnavailableError(
                f"model {backend.name!r} is unavailable: {backend.failure}; it needs a restart",
                retry_after_s=self._limits.retry_after_s,
            )
        return BackendUnavailableError(
            f"model {backend.name!r} is unavailable: {backend.failure}; restarting it in {wait:.0f}s",
            retry_after_s=max(wait, 1.0),
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
            if target.state is BackendState.FAILED and self._supervisor.restart_wait(target) != 0:
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
                if target.state in (BackendState.STOPPED, BackendState.FAILED):
                    wake_ms, warmup_ms = await self._start(target, group)
                else:
                    wake_ms, warmup_ms = await self._wake(target, group)
            except BackendUnavailableError as exc:
                self._metrics.switches.labels(victims, name, "failed").inc()
                log.warning(
                    "switch %s -> %s failed: %s",
                    victims,
                    name,
                    exc.message,
                    extra={
                        "event": "switch",
                        "result": "failed",
                        "from_model": victims,
                        "to_model": name,
                        "gpu": group.name,
                    },
                )
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
            if victim.holds_memory and self._supervisor.supervises(victim.name):
                await self._supervisor.kill(victim)  # a hung engine: killing it frees the GPU
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
            if self._supervisor.supervises(target.name):
                await self._supervisor.kill(target)  # only a dead process surely frees its memory
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

    async def _start(self, target: Backend, group: _Group) -> tuple[float, float]:
        """Start a supervised backend (STOPPED, or FAILED and due for a restart), then warm up."""
        t = target.config.timeouts
        group.enter("starting", t.start_s)
        started = time.monotonic()
        try:
            async with asyncio.timeout(t.start_s):
                await self._supervisor.start(target)
        except (TimeoutError, StartError, ControlError, OSError) as exc:
            kind = "timeout" if isinstance(exc, TimeoutError) else "error"
            raise await self._abandon_start(
                target, kind, f"start failed: {_describe(exc, t.start_s)}"
            ) from exc
        start_ms = (time.monotonic() - started) * 1000
        log.info("started %s in %.1f s", target.name, start_ms / 1000)
        group.enter("waking", t.wake_s)
        try:
            async with asyncio.timeout(t.wake_s):
                warmup_ms = await target.warm_up()
            if target.config.warmup.enabled:
                self._metrics.warmup_seconds.labels(target.name).observe(warmup_ms / 1000)
        except (TimeoutError, ControlError) as exc:
            raise await self._abandon_start(
                target, "warmup", f"warm-up failed: {_describe(exc, t.wake_s)}"
            ) from exc
        return start_ms, warmup_ms

    async def _abandon_start(
        self, target: Backend, kind: str, reason: str
    ) -> BackendUnavailableError:
        """A start or its warm-up failed: count it, mark the backend failed, kill its process
        (only a dead process surely frees its memory) and return the error for the waiters."""
        self._metrics.wake_failures.labels(target.name, kind).inc()
        target.mark_failed(reason, holds_memory=True)
        await self._supervisor.kill(target)
        return BackendUnavailableError(
            f"could not start {target.name!r} ({reason})", retry_after_s=self._limits.retry_after_s
        )

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
                if not self._idle_for(b, time.monotonic(), ttl):  # re-check after the await
                    continue
                try:
                    await self._put_to_sleep(b, group)
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
            and now - b.last_used >= ttl
        )

    # ----- used by start-up (proxy/startup.py), under the group's lock ------------------------
    async def sleep_now(self, backend: Backend) -> bool:
        """Put a backend without leases to sleep; False (and FAILED) if that failed."""
        try:
            async with asyncio.timeout(backend.config.timeouts.sleep_s):
                await backend.sleep()
            return True
        except (TimeoutError, ControlError, RuntimeError) as exc:
            reason = f"sleep at start-up failed: {_describe(exc, backend.config.timeouts.sleep_s)}"
            backend.mark_failed(reason, holds_memory=not await self._confirmed_asleep(backend))
            return False

    async def start_now(self, backend: Backend, group: _Group) -> bool:
        """Start a supervised backend and warm it up; it is READY afterwards unless this failed."""
        try:
            await self._start(backend, group)
        except BackendUnavailableError:
            log.exception("start-up: could not start %s", backend.name)
            return False
        finally:
            group.enter(None)
        backend.set_state(BackendState.READY)
        return True

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
