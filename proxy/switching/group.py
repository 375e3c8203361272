"""GpuGroup: the backends that share one GPU, the lock that serialises every change of
memory on it, and the phase of the change running now (for /ready and /admin/status).

Owns: the lock, the `reconciled` event (set once start-up has adopted or started every
member) and the phase. The switcher (switches, idle sleep) and start-up take the lock; under it,
transitions set the phase of each step and the switcher clears it; start-up sets `reconciled`.
Two settings are set once by the Switcher when it builds the group: `max_hold_s` and `memory`
(its NVML probe, or None). Readers (routes, status, metrics) only read.
"""

from __future__ import annotations

import asyncio

from proxy.backends import Backend
from proxy.backends.gpu_memory import GpuMemory
from proxy.clock import Clock, SystemClock
from proxy.switching.plan import Member, Plan, plan_switch

STUCK_GRACE_S = 60.0


class GpuGroup:
    def __init__(
        self, name: str, max_awake: int, members: list[Backend], clock: Clock | None = None
    ) -> None:
        self.name = name
        self.max_hold_s: float | None = None  # scheduling.max_hold_s, set by the Switcher
        self.memory: GpuMemory | None = None  # its NVML probe, set by the Switcher
        self._clock = clock or SystemClock()
        self.max_awake = max_awake
        self.members = members
        self._changed = asyncio.Event()  # any member's change, or a new waiter
        for m in members:
            m.listeners.append(self.notify)
        self.lock = asyncio.Lock()
        self.reconciled = asyncio.Event()
        # draining | sleeping | waking | starting, while a switch runs
        self.phase: str | None = None
        self._phase_since = 0.0
        self._phase_limit_s = 0.0

    def plan(self, target: str) -> Plan:
        """plan_switch on a snapshot of the group as it is now."""
        members = [Member(b.name, b.state, b.holds_memory, b.last_used) for b in self.members]
        return plan_switch(target, members, self.max_awake)

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, timeout_s: float | None) -> bool:
        """Until any member changes (state, leases, waiters) or `timeout_s` passed: True when
        something changed, False when the time ran out."""
        changed = self._changed
        if timeout_s is None:
            await changed.wait()
            return True
        try:
            async with asyncio.timeout(max(timeout_s, 0.0)):
                await changed.wait()
        except TimeoutError:
            return False
        return True

    def enter(self, phase: str | None, limit_s: float = 0.0) -> None:
        self.phase, self._phase_since, self._phase_limit_s = phase, self._clock.monotonic(), limit_s

    @property
    def phase_s(self) -> float:
        return self._clock.monotonic() - self._phase_since if self.phase else 0.0

    @property
    def stuck(self) -> bool:
        """The current phase outlived its own timeout (which should have ended it) by more than
        the cleanup a failure may still do in that phase (confirming, best-effort sleep, kill)."""
        return self.phase is not None and self.phase_s > self._phase_limit_s + STUCK_GRACE_S
