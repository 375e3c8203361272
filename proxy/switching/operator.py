"""Operator: an operator's controls of one model (`POST /admin/models/{name}/...`), through the
same locks and the same policy as requests - no side door.

    sleep    READY: drain (max_hold_s applies), /sleep, confirm; under the group's lock
    wake     a request without a body: it waits for its model like any other (the policy may
             hold it up to max_wait_s while another model serves), then lets go at once
    restart  supervised: drain, stop the process (not a crash; its crash history, a crash loop
             included, is forgotten), then wake - the start goes through the policy too
    reset    attached and FAILED (the operator fixed the engine): /health and /is_sleeping
             again, under the lock; adopted ASLEEP (an awake one is put to sleep first: only
             a wake and its warm-up make a model READY); a level-2 backend that says it
             sleeps is woken in full and slept again (its weights may be mapped), and only
             with every other member asleep

Stateless: it acts through the Switcher (which owns the groups and the steps), the supervisor
and the backends' own methods, always under the group's lock, and raises `ProxyError`s the
routes render (a model in the wrong state for the action is 409).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from proxy.backends import Backend, BackendState, ControlError
from proxy.backends.supervisor import Supervisor
from proxy.errors import BackendUnavailableError, ConflictError
from proxy.switching.group import GpuGroup
from proxy.switching.switcher import Switcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    model: str
    action: str
    state: str
    detail: str
    ms: float

    def as_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "action": self.action,
            "state": self.state,
            "detail": self.detail,
            "ms": round(self.ms, 1),
        }


class Operator:
    def __init__(self, switcher: Switcher, supervisor: Supervisor) -> None:
        self._switcher = switcher
        self._supervisor = supervisor

    def _done(self, b: Backend, action: str, detail: str, t0: float) -> Outcome:
        ms = (self._switcher.clock.monotonic() - t0) * 1000
        log.info(
            "operator %s %s: %s",
            action,
            b.name,
            detail,
            extra={"event": "operator", "action": action, "model": b.name},
        )
        self._switcher.events.publish("operator", model=b.name, action=action, detail=detail)
        return Outcome(b.name, action, b.state.value, detail, ms)

    async def _reconciled(self, b: Backend) -> GpuGroup:
        group = self._switcher.group_of(b.name)
        await group.reconciled.wait()
        return group

    async def sleep(self, b: Backend) -> Outcome:
        t0 = self._switcher.clock.monotonic()
        group = await self._reconciled(b)
        async with group.lock:
            if b.state is BackendState.ASLEEP or b.state is BackendState.STOPPED:
                return self._done(b, "sleep", f"already {b.state.value}", t0)
            if b.state is not BackendState.READY:
                raise ConflictError(f"model {b.name!r} is {b.state.value}: {self._hint(b)}")
            try:
                await self._switcher.steps.put_to_sleep(b, group)
            finally:
                group.enter(None)
        if b.failure:  # its process died while it drained: FAILED, not asleep
            return self._done(b, "sleep", f"not put to sleep: {b.failure}", t0)
        return self._done(b, "sleep", "put to sleep (requests that come now wake it again)", t0)

    async def wake(self, b: Backend) -> Outcome:
        t0 = self._switcher.clock.monotonic()
        await self._reconciled(b)
        if b.state is BackendState.FAILED and self._supervisor.restart_wait(b) is None:
            raise ConflictError(f"model {b.name!r} is failed: {self._hint(b)}")
        lease, timings = await self._switcher.lease(b.name)
        lease.release()
        if not (timings.wake_ms or timings.sleep_ms):
            return self._done(b, "wake", "already awake", t0)
        detail = f"woken (sleep {timings.sleep_ms:.0f} ms, wake {timings.wake_ms:.0f} ms, "
        return self._done(b, "wake", detail + f"warm-up {timings.warmup_ms:.0f} ms)", t0)

    async def restart(self, b: Backend) -> Outcome:
        t0 = self._switcher.clock.monotonic()
        if not self._supervisor.supervises(b.name):
            raise ConflictError(
                f"model {b.name!r} is attached (a url, no command): the proxy cannot restart "
                "its process; restart the engine yourself, then POST .../reset"
            )
        group = await self._reconciled(b)
        async with group.lock:
            if b.state is BackendState.READY:
                try:
                    await self._switcher.steps.drain(b, group)
                finally:
                    group.enter(None)
            await self._supervisor.stop(b)
        log.info("operator restart %s: stopped; starting it again", b.name)
        await self.wake(b)
        return self._done(b, "restart", "stopped and started again", t0)

    async def reset(self, b: Backend) -> Outcome:
        t0 = self._switcher.clock.monotonic()
        if self._supervisor.supervises(b.name):
            raise ConflictError(
                f"model {b.name!r} is supervised: POST .../restart starts its process again"
            )
        group = await self._reconciled(b)
        async with group.lock:
            if b.state is not BackendState.FAILED:
                raise ConflictError(f"model {b.name!r} is {b.state.value}, not failed")
            asleep = await self._ask(b)
            if asleep and b.config.sleep_level == 2:
                awake = [m.name for m in group.members if m is not b and m.holds_memory]
                if awake:
                    raise ConflictError(
                        f"model {b.name!r} sleeps at level 2 and may still hold its weights; "
                        f"it is reset only with nothing else awake on its GPU: sleep "
                        f"{', '.join(awake)} first (POST /admin/models/NAME/sleep)"
                    )
                if not await self._switcher.steps.reset_level2(b):
                    raise BackendUnavailableError(f"reset of {b.name!r} failed: {b.failure}")
            # awake: asleep first (no lease exists on a FAILED backend), so that only a wake
            # and its warm-up ever make it READY
            if not asleep and not await self._switcher.steps.try_sleep(b):
                raise BackendUnavailableError(
                    f"reset of {b.name!r} failed: it is awake and would not sleep; it stays failed"
                )
            b.recovered()
        return self._done(b, "reset", f"checked and adopted {b.state.value}", t0)

    async def _ask(self, b: Backend) -> bool:
        """/health and /is_sleeping once more; the backend stays FAILED if either fails."""
        t = b.config.timeouts
        try:
            async with asyncio.timeout(t.control_s):
                if not await b.control.health():
                    raise ControlError("/health did not answer 200")
                return await b.control.is_sleeping()
        except (TimeoutError, ControlError) as exc:
            why = f"timed out after {t.control_s:g}s" if isinstance(exc, TimeoutError) else exc
            raise BackendUnavailableError(
                f"model {b.name!r} is still not usable ({why}); it stays failed"
            ) from None

    def _hint(self, b: Backend) -> str:
        if self._supervisor.supervises(b.name):
            return f"{b.failure or 'no process'}; POST /admin/models/{b.name}/restart"
        return f"{b.failure or 'unknown'}; fix the engine, then POST /admin/models/{b.name}/reset"
