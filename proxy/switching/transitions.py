"""Transitions: one backend's memory-changing step (drain + sleep, wake + warm-up, start +
warm-up), each bounded by its timeout, each turning any failure into a FAILED backend (with
an honest `holds_memory`) and a BackendUnavailableError for the waiters.

Holds no state of its own (only its collaborators), but it *writes backend state*: each step
moves its backend (SLEEPING/ASLEEP, WAKING, via the supervisor STARTING), clears `draining` after
a failed drain, and marks a backend FAILED with its `holds_memory`. The Switcher decides *which*
steps run and holds the group's lock around them; this module decides how one step runs and
fails. Metrics of each step (sleep/wake/warm-up durations, wake failures) are recorded here.
"""

from __future__ import annotations

import asyncio
import logging

from proxy.backends import Backend, BackendState, ControlError
from proxy.backends.adoption import Claim
from proxy.backends.supervisor import StartError, Supervisor
from proxy.clock import Clock
from proxy.config import LimitsConfig
from proxy.errors import BackendUnavailableError
from proxy.observability.metrics import Metrics
from proxy.switching.group import GpuGroup

log = logging.getLogger(__name__)


class Transitions:
    def __init__(
        self, limits: LimitsConfig, metrics: Metrics, supervisor: Supervisor, clock: Clock
    ) -> None:
        self._clock = clock
        self._limits = limits
        self._metrics = metrics
        self._supervisor = supervisor

    def _unavailable(self, message: str) -> BackendUnavailableError:
        return BackendUnavailableError(message, retry_after_s=self._limits.retry_after_s)

    async def put_to_sleep(
        self, victim: Backend, group: GpuGroup, *, preempt: bool = False
    ) -> float:
        """Drain, then /sleep and confirm; or, with `preempt`, sleep at once with mode=keep
        (its requests pause and resume after its next wake). Returns the sleep's ms."""
        if preempt:
            return await self._sleep(victim, group, preempt=True)
        await self.drain(victim, group)
        if victim.state is BackendState.FAILED and not victim.holds_memory:
            return 0.0  # its process died while it drained: nothing left to put to sleep
        return await self._sleep(victim, group, preempt=False)

    async def drain(self, victim: Backend, group: GpuGroup) -> None:
        """No new leases, and wait for those in flight (within `drain_s`; past `max_hold_s` the
        streams still open are ended). Still `draining` afterwards: the caller's next step
        (a sleep, a stop) ends the drain; on a timeout the drain ends here and it raises."""
        t = victim.config.timeouts
        group.enter("draining", t.drain_s)
        try:
            async with asyncio.timeout(t.drain_s):
                await self._drain(victim, group)
        except TimeoutError:
            victim.end_drain()
            raise self._unavailable(
                f"model {victim.name!r} still had requests in flight after {t.drain_s:g}s; not switching"
            ) from None
        except BaseException:  # cancelled (shutdown): never leave it refusing every request
            victim.end_drain()
            raise

    async def _sleep(self, victim: Backend, group: GpuGroup, *, preempt: bool) -> float:
        t = victim.config.timeouts
        group.enter("sleeping", t.sleep_s)
        try:
            async with asyncio.timeout(t.sleep_s):
                ms = await victim.sleep(preempt=preempt)
            self._metrics.sleep_seconds.labels(victim.name, str(victim.config.sleep_level)).observe(
                ms / 1000
            )
            return ms
        except (TimeoutError, ControlError, RuntimeError) as exc:
            reason = f"sleep failed: {describe(exc, t.sleep_s)}"
            victim.mark_failed(reason, holds_memory=not await self.confirmed_asleep(victim))
            if victim.holds_memory and self._supervisor.supervises(victim.name):
                await self._supervisor.kill(victim)  # a hung engine: killing it frees the GPU
            raise self._unavailable(f"could not put {victim.name!r} to sleep ({reason})") from exc

    async def _drain(self, victim: Backend, group: GpuGroup) -> None:
        """The drain, and past the group's `max_hold_s` the end of the streams still open."""
        hold = group.max_hold_s
        if hold is None:
            await victim.drain()
            return
        try:
            async with asyncio.timeout(hold):
                await victim.drain()
            return
        except TimeoutError:
            pass
        asked = victim.revoke_leases(
            f"model {victim.name!r} held its GPU for more than max_hold_s={hold:g}s of a switch "
            "to another model; this stream was ended"
        )
        self._metrics.decisions.labels(group.name, "hold").inc()
        log.warning("%s: ended %d request(s) held past max_hold_s=%gs", victim.name, asked, hold)
        await victim.drain()

    async def wake(self, target: Backend, group: GpuGroup) -> tuple[float, float]:
        """Wake and warm up (not READY yet: the caller sets it). Returns (wake ms, warm-up ms)."""
        t = target.config.timeouts
        level = str(target.config.sleep_level)
        await self._supervisor.settled(group.members)  # a member that just died: memory first
        group.enter("waking", t.wake_s)
        started = self._clock.monotonic()
        try:
            async with asyncio.timeout(t.wake_s):
                wake_ms = await target.wake()
            self._metrics.wake_seconds.labels(target.name, level).observe(wake_ms / 1000)
        except (TimeoutError, ControlError, RuntimeError) as exc:
            # a failed wake can leave memory mapped (vLLM 0.26 does not roll back): never trust it
            self._metrics.wake_failures.labels(target.name, failure_kind(exc)).inc()
            reason = f"wake failed: {describe(exc, t.wake_s)}"
            target.mark_failed(reason, holds_memory=True)
            if self._supervisor.supervises(target.name):
                await self._supervisor.kill(target)  # only a dead process surely frees its memory
            raise self._unavailable(f"could not wake {target.name!r} ({reason})") from exc
        try:
            async with asyncio.timeout(max(t.wake_s - (self._clock.monotonic() - started), 0.001)):
                warmup_ms = await self._warm_up(target)
        except (TimeoutError, ControlError) as exc:
            self._metrics.wake_failures.labels(target.name, "warmup").inc()
            reason = f"warm-up failed: {describe(exc, t.wake_s)}"
            released = await self.try_sleep(target)
            target.mark_failed(reason, holds_memory=not released)
            if target.holds_memory and self._supervisor.supervises(target.name):
                # a crash during the warm-up (or an engine that will not sleep): only a dead
                # process surely frees its memory - never leave it blocking the group
                await self._supervisor.kill(target)
            raise self._unavailable(f"could not warm up {target.name!r} ({reason})") from exc
        return wake_ms, warmup_ms

    async def adopt(self, backend: Backend) -> Claim:
        """Start-up, under the group's lock: adopt, replace or refuse what already listens at
        a supervised backend's URL (Supervisor.adopt)."""
        return await self._supervisor.adopt(backend)

    async def start(self, target: Backend, group: GpuGroup) -> tuple[float, float]:
        """Start a supervised backend (STOPPED, or FAILED and due for a restart), then warm up.
        Returns (start ms, warm-up ms)."""
        t = target.config.timeouts
        await self._supervisor.settled(group.members)  # a member that just died: memory first
        group.enter("starting", t.start_s)
        started = self._clock.monotonic()
        try:
            async with asyncio.timeout(t.start_s):
                await self._supervisor.start(target)
        except (TimeoutError, StartError, ControlError, OSError) as exc:
            kind = "timeout" if isinstance(exc, TimeoutError) else "error"
            raise await self._abandon_start(
                target, kind, f"start failed: {describe(exc, t.start_s)}"
            ) from exc
        start_ms = (self._clock.monotonic() - started) * 1000
        log.info("started %s in %.1f s", target.name, start_ms / 1000)
        group.enter("waking", t.wake_s)
        try:
            async with asyncio.timeout(t.wake_s):
                warmup_ms = await self._warm_up(target)
        except (TimeoutError, ControlError) as exc:
            raise await self._abandon_start(
                target, "warmup", f"warm-up failed: {describe(exc, t.wake_s)}"
            ) from exc
        return start_ms, warmup_ms

    async def reset_level2(self, backend: Backend) -> bool:
        """Start-up only, nothing else awake: the staged level-2 wake, then /sleep?level=2 and
        confirm. Its state stays UNKNOWN (start-up then adopts it as asleep); False (and
        FAILED, holding memory: nobody knows what it holds) if that failed."""
        t = backend.config.timeouts
        limit_s = t.wake_s  # of the phase running, for the message
        try:
            async with asyncio.timeout(limit_s):
                await backend.control.wake(2)
            limit_s = t.sleep_s
            async with asyncio.timeout(limit_s):
                await backend.control.sleep(2)
                if not await backend.control.is_sleeping():
                    raise ControlError("/sleep answered 200 but /is_sleeping is false")
            return True
        except (TimeoutError, ControlError) as exc:
            reason = f"level-2 reset at start-up failed: {describe(exc, limit_s)}"
            backend.mark_failed(reason, holds_memory=True)
            return False

    async def sleep_undrained(self, backend: Backend) -> bool:
        """Start-up only (no leases exist yet): sleep; False (and FAILED) if that failed."""
        try:
            async with asyncio.timeout(backend.config.timeouts.sleep_s):
                await backend.sleep()
            return True
        except (TimeoutError, ControlError, RuntimeError) as exc:
            reason = f"sleep at start-up failed: {describe(exc, backend.config.timeouts.sleep_s)}"
            backend.mark_failed(reason, holds_memory=not await self.confirmed_asleep(backend))
            return False

    async def confirmed_asleep(self, backend: Backend) -> bool:
        try:
            async with asyncio.timeout(backend.config.timeouts.control_s):
                return await backend.control.is_sleeping()
        except (TimeoutError, ControlError):
            return False

    async def _warm_up(self, target: Backend) -> float:
        ms = await target.warm_up()
        if target.config.warmup.enabled:
            self._metrics.warmup_seconds.labels(target.name).observe(ms / 1000)
        return ms

    async def _abandon_start(
        self, target: Backend, kind: str, reason: str
    ) -> BackendUnavailableError:
        """A start or its warm-up failed: count it, mark the backend failed, kill its process
        (only a dead process surely frees its memory) and return the error for the waiters."""
        self._metrics.wake_failures.labels(target.name, kind).inc()
        target.mark_failed(reason, holds_memory=True)
        await self._supervisor.kill(target)
        return self._unavailable(f"could not start {target.name!r} ({reason})")

    async def try_sleep(self, backend: Backend) -> bool:
        """Best effort, its state untouched: /sleep and confirm (after a failed warm-up - the
        wake itself succeeded - and for an operator's reset of a FAILED backend)."""
        try:
            async with asyncio.timeout(backend.config.timeouts.sleep_s):
                await backend.control.sleep(backend.config.sleep_level)
        except (TimeoutError, ControlError):
            return False
        return await self.confirmed_asleep(backend)


def failure_kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "oom" if "out of memory" in str(exc) else "error"


def describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout_s:g}s"
    return str(exc) or type(exc).__name__
