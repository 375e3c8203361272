"""SwitchRunner: carries out one switch the policy decided, under its GPU group's lock.

Sleep-first (the usual case): drain and sleep each victim, then wake (or start) the target.
Wake-first (`Decision.wake_first`: declared memory says the target fits beside the victims):
wake the target, make it READY - its waiters are served from here on - and put the victims to
sleep afterwards, in a task of its own that takes the group's lock again. Any failure: the
backend that failed is FAILED; victims put to sleep for it are woken back while the group has
room (a killed target holds none); then the waiters get the 503.

State: none of its own beyond the exits the supervisor reported for backends in a step (applied
when the step is over, see `Switcher.report_exit`) and its background wake-first follow-ups.
It writes backend state only through the steps it runs (transitions.py) and `set_state(READY)`,
always under the group's lock, and folds measured costs into each backend (`Backend.measured`)
and into the SwitchCosts (per pair, and the free memory each wake took where NVML reads it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from proxy.backends import Backend, BackendState, WakeTimings
from proxy.clock import Clock
from proxy.errors import BackendUnavailableError
from proxy.observability.events import Events
from proxy.observability.metrics import Metrics
from proxy.switching.costs import SwitchCosts
from proxy.switching.group import GpuGroup
from proxy.switching.policy import Decision
from proxy.switching.transitions import Transitions

log = logging.getLogger("proxy.switching.switcher")


def apply_exit(backend: Backend, code: int) -> bool:
    """`backend`'s process died by itself: FAILED with its memory free. False (nothing done)
    while a step has it in a memory call (sleeping, waking, starting): that step fails on its
    next call, and the exit is applied after it (`SwitchRunner.exited`)."""
    if backend.state is BackendState.FAILED:
        backend.holds_memory = False
        backend.notify_changed()
    elif backend.state in (BackendState.READY, BackendState.ASLEEP):
        backend.mark_failed(f"process exited with {code}", holds_memory=False)
    elif backend.state is not BackendState.STOPPED:
        return False
    return True


class SwitchRunner:
    def __init__(
        self,
        steps: Transitions,
        metrics: Metrics,
        clock: Clock,
        backends: Mapping[str, Backend],
        costs: SwitchCosts,
        events: Events,
    ) -> None:
        self._costs = costs
        self._events = events
        self._steps = steps
        self._metrics = metrics
        self._clock = clock
        self._backends = backends
        self._exits: dict[str, int] = {}  # reported while the backend was in a step
        self._follow_ups: set[asyncio.Task[None]] = set()

    def exited(self, backend: Backend, code: int) -> None:
        self._exits[backend.name] = code

    def _apply_exits(self) -> None:
        for name, code in self._exits.items():
            apply_exit(self._backends[name], code)
        self._exits.clear()

    async def switch(
        self, target: Backend, group: GpuGroup, decision: Decision, flight_started: float
    ) -> WakeTimings:
        """Run `decision` (the caller holds the group's lock). Returns what the target's
        requests paid; raises BackendUnavailableError for its waiters."""
        started = self._clock.monotonic()
        victims = [self._backends[v] for v in decision.victims]
        label = "+".join(decision.victims) or "none"
        slept: list[Backend] = []
        sleep_ms = 0.0
        try:
            if not decision.wake_first:
                for victim in victims:
                    preempt = victim.name in decision.preempt
                    ms = await self._steps.put_to_sleep(victim, group, preempt=preempt)
                    victim.measured(sleep_s=ms / 1000)
                    sleep_ms += ms
                    slept.append(victim)
            free_before = None if group.memory is None else group.memory.free_gib()
            if target.state in (BackendState.STOPPED, BackendState.FAILED):
                wake_ms, warmup_ms = await self._steps.start(target, group)
            else:
                wake_ms, warmup_ms = await self._steps.wake(target, group)
            free_after = None if group.memory is None else group.memory.free_gib()
        except BackendUnavailableError as exc:
            self._metrics.switches.labels(label, target.name, "failed").inc()
            self._events.publish(
                "switch",
                gpu=group.name,
                result="failed",
                error=exc.message,
                **{"from": label, "to": target.name},
            )
            log.warning(
                "switch %s -> %s failed: %s",
                label,
                target.name,
                exc.message,
                extra={
                    "event": "switch",
                    "result": "failed",
                    "from_model": label,
                    "to_model": target.name,
                    "gpu": group.name,
                },
            )
            await self._bring_back(slept, group, failed=target.name)
            raise
        finally:
            group.enter(None)
            self._metrics.switching_seconds.labels(group.name).inc(
                self._clock.monotonic() - started
            )
            self._apply_exits()
        target.measured(wake_s=(wake_ms + warmup_ms) / 1000)
        if free_before is not None and free_after is not None:
            self._costs.woke(target.name, free_before - free_after)
        if len(victims) == 1 and not decision.wake_first:
            self._costs.switched(
                victims[0].name, target.name, (sleep_ms + wake_ms + warmup_ms) / 1000
            )
        target.last = WakeTimings(sleep_ms=sleep_ms, wake_ms=wake_ms, warmup_ms=warmup_ms)
        target.set_state(BackendState.READY)
        if decision.wake_first and victims:
            task = asyncio.create_task(
                self._sleep_after(victims, group), name=f"wake-first:{group.name}"
            )
            self._follow_ups.add(task)
            task.add_done_callback(self._follow_ups.discard)
        self._metrics.switches.labels(label, target.name, "ok").inc()
        self._metrics.switch_seconds.labels(label, target.name).observe(
            self._clock.monotonic() - flight_started
        )
        total_ms = round((self._clock.monotonic() - started) * 1000, 1)
        self._events.publish(
            "switch",
            gpu=group.name,
            result="ok",
            reason=decision.reason,
            wake_first=decision.wake_first,
            switch_ms=total_ms,
            sleep_ms=round(sleep_ms, 1),
            wake_ms=round(wake_ms, 1),
            warmup_ms=round(warmup_ms, 1),
            **{"from": label, "to": target.name},
        )
        log.info(
            "switched %s -> %s in %.0f ms (sleep %.0f, wake %.0f, warm-up %.0f)%s",
            label,
            target.name,
            total_ms,
            sleep_ms,
            wake_ms,
            warmup_ms,
            ", waking first" if decision.wake_first else "",
            extra={
                "event": "switch",
                "from_model": label,
                "to_model": target.name,
                "gpu": group.name,
                "reason": decision.reason,
                "switch_ms": total_ms,
                "sleep_ms": sleep_ms,
                "wake_ms": wake_ms,
                "warmup_ms": warmup_ms,
            },
        )
        return target.last

    async def _sleep_after(self, victims: list[Backend], group: GpuGroup) -> None:
        """Wake-first, second half: the victims sleep once the target serves, as long as the
        group still has more awake than `max_awake` (a switch since may have changed that)."""
        async with group.lock:
            try:
                for victim in victims:
                    awake = sum(1 for m in group.members if m.holds_memory)
                    if victim.state is not BackendState.READY or awake <= group.max_awake:
                        continue
                    try:
                        ms = await self._steps.put_to_sleep(victim, group)
                    except BackendUnavailableError as exc:
                        log.warning("wake-first: could not put %s to sleep: %s", victim.name, exc)
                        continue
                    victim.measured(sleep_s=ms / 1000)
            finally:
                group.enter(None)
                self._apply_exits()

    async def _bring_back(self, slept: list[Backend], group: GpuGroup, failed: str) -> None:
        """The switch to `failed` failed after its victims went to sleep: wake them back while the
        group has room, most recently used first. Never evicts anything for this, and never wakes
        next to a failed member that may still hold memory (a wedged engine leaks it).
        Best effort: the waiters of `failed` get their 503 once this is done."""
        for victim in reversed(slept):
            plan = group.plan(victim.name)
            if victim.state is not BackendState.ASLEEP or plan.victims or plan.blocked_by:
                continue
            try:
                wake_ms, warmup_ms = await self._steps.wake(victim, group)
            except BackendUnavailableError as exc:
                self._metrics.switches.labels(failed, victim.name, "failed").inc()
                log.warning("could not bring %s back: %s", victim.name, exc.message)
                continue
            victim.last = WakeTimings(wake_ms=wake_ms, warmup_ms=warmup_ms)
            victim.set_state(BackendState.READY)
            self._metrics.switches.labels(failed, victim.name, "restored").inc()
            self._events.publish(
                "switch", gpu=group.name, result="restored", **{"from": failed, "to": victim.name}
            )
            log.info(
                "brought %s back after the switch to %s failed (wake %.0f ms, warm-up %.0f ms)",
                victim.name,
                failed,
                wake_ms,
                warmup_ms,
                extra={
                    "event": "switch",
                    "result": "restored",
                    "from_model": failed,
                    "to_model": victim.name,
                    "gpu": group.name,
                    "wake_ms": wake_ms,
                    "warmup_ms": warmup_ms,
                },
            )

    async def close(self) -> None:
        for task in list(self._follow_ups):
            task.cancel()
        await asyncio.gather(*self._follow_ups, return_exceptions=True)
