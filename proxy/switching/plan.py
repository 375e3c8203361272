"""The switch decision, as a pure function of a snapshot: no I/O, no logging, no clock.

Which backends of a GPU group must sleep so that a target may wake? Kept apart from the
switcher's I/O so that policies can be changed and tested alone (tests/proxy/test_plan.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from proxy.backends.state import BackendState


@dataclass(frozen=True)
class Member:
    """What the plan needs to know about one backend (a snapshot)."""

    name: str
    state: BackendState
    holds_memory: bool
    last_used: float
    busy: bool = False  # requests in flight or queued: evicted after the idle ones


@dataclass(frozen=True)
class Plan:
    victims: tuple[str, ...] = ()
    blocked_by: tuple[str, ...] = ()


def plan_switch(target: str, members: Sequence[Member], max_awake: int) -> Plan:
    """Pure: which members must sleep so that `target` can wake within `max_awake`."""
    others = [m for m in members if m.name != target and m.holds_memory]
    excess = len(others) - (max_awake - 1)
    if excess <= 0:
        return Plan()
    # idle before busy (a long stream's model looks "least recently used" by its lease start),
    # then the least recently used
    sleepable = sorted(
        (m for m in others if m.state is BackendState.READY), key=lambda m: (m.busy, m.last_used)
    )
    if len(sleepable) < excess:
        stuck = tuple(sorted(m.name for m in others if m.state is not BackendState.READY))
        return Plan(blocked_by=stuck)
    return Plan(victims=tuple(m.name for m in sleepable[:excess]))
