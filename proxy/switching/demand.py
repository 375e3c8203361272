"""Demand: which requests wait for which model, since when, and the snapshot the policy decides on.

Owned by the Switcher: `lease()` enters a request when it starts to wait and leaves it when it
gets its lease, gives up or fails; nobody else writes it. Every entry and exit tells the model's
GPU group (`GpuGroup.notify`), so a switch waiting for its turn re-decides at once. It also keeps
each model's last idle gaps (`arrived`: a request for a model with none in flight or queued,
the time since its last request ended), which the policy weighs before it lingers.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable

from proxy.backends import Backend, BackendState
from proxy.clock import Clock
from proxy.config import GpuConfig
from proxy.switching.costs import SwitchCosts
from proxy.switching.group import GpuGroup
from proxy.switching.policy import DEFAULT_COST_S, RETURN_SAMPLES, GroupView, ModelView


class Demand:
    def __init__(self, names: Iterable[str], clock: Clock) -> None:
        self._clock = clock
        self.waiting: Counter[str] = Counter()
        self._since: dict[str, deque[float]] = {n: deque() for n in names}
        self._gaps: dict[str, deque[float]] = {n: deque(maxlen=RETURN_SAMPLES) for n in names}

    def idle(self, b: Backend) -> bool:
        """Nothing of `b`'s in flight or waiting."""
        return b.leases == 0 and not self._since[b.name]

    def arrived(self, name: str, last_used: float) -> None:
        """A request arrived for `name` while it was idle (once per request: on its lease at
        once, or as it enters the queue): note the gap since its last request ended."""
        if last_used:
            self._gaps[name].append(self._clock.monotonic() - last_used)

    def enter(self, name: str, group: GpuGroup) -> float:
        """A request starts to wait for `name`; returns its arrival time (for `leave`)."""
        at = self._clock.monotonic()
        self.waiting[name] += 1
        self._since[name].append(at)  # arrivals only grow: the deque stays sorted
        group.notify()
        return at

    def leave(self, name: str, at: float, group: GpuGroup) -> None:
        self.waiting[name] -= 1
        self._since[name].remove(at)  # the first equal one: any of equal arrivals is the same
        group.notify()

    def older_elsewhere(self, name: str, at: float | None, group: GpuGroup) -> bool:
        """Does a request for another member of `group` wait that arrived before `at` (None:
        any time)?"""
        return any(
            q[0] < at if at is not None else True
            for b in group.members
            if b.name != name and (q := self._since[b.name])
        )

    def queue(self, name: str) -> tuple[float, ...]:
        return tuple(self._since[name])

    def _demand_of(self, b: Backend) -> tuple[float, ...]:
        """Its queue; requests paused in it by a preemption wait for its wake like queued ones."""
        paused = (b.paused_since,) * b.paused if b.paused_since is not None else ()
        return paused + self.queue(b.name)

    def view(
        self,
        group: GpuGroup,
        gpu: GpuConfig,
        can_start: Callable[[Backend], bool],
        costs: SwitchCosts,
    ) -> GroupView:
        """The policy's snapshot of `group` now (free memory read from its NVML probe, if
        any). A FAILED member that may not be started again has no demand (its requests are
        refused at once, not scheduled)."""
        models = []
        for b in group.members:
            failed = b.state is BackendState.FAILED and not can_start(b)
            models.append(
                ModelView(
                    name=b.name,
                    state=b.state,
                    holds_memory=b.holds_memory,
                    queue=() if failed else self._demand_of(b),
                    in_flight=b.leases - b.paused,
                    ready_since=b.ready_at,
                    last_used=b.last_used or None,
                    sleep_cost_s=b.sleep_cost_s or DEFAULT_COST_S,
                    wake_cost_s=b.wake_cost_s or DEFAULT_COST_S,
                    priority=b.config.priority,
                    preemptible=b.config.preemptible,
                    memory_gib=b.config.memory_gib,
                    asleep_memory_gib=b.config.asleep_memory_gib,
                    wake_gib=costs.wake_gib(b.name),
                    idle_gaps=tuple(self._gaps[b.name]),
                )
            )
        s = gpu.scheduling
        return GroupView(
            name=group.name,
            max_awake=group.max_awake,
            models=tuple(models),
            policy=s.policy,
            max_wait_s=s.max_wait_s,
            min_residency_s=s.min_residency_s,
            memory_gib=gpu.memory_gib,
            free_gib=None if group.memory is None else group.memory.free_gib(),
            pair_costs=costs.pairs([b.name for b in group.members]),
        )
