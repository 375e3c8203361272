"""Backend lifecycle.

    UNKNOWN --reconciled awake--> READY        UNKNOWN --reconciled asleep--> ASLEEP
    UNKNOWN --awake beyond max_awake--> SLEEPING --> ASLEEP
    READY --drain + /sleep + /is_sleeping true--> ASLEEP
    ASLEEP --wake (level 1 or staged level 2) + /is_sleeping false + warm-up--> READY
    any --failed sleep, wake, warm-up or start--> FAILED   (sticky: never woken again in place)

Only the Switcher drives transitions (under its GPU group's lock), and only between two awaits;
everyone else reads snapshots.
"""

from __future__ import annotations

import enum


class BackendState(enum.StrEnum):
    UNKNOWN = "unknown"  # not reconciled yet (proxy start-up, backend still starting)
    READY = "ready"  # awake and warmed up: the only state requests are forwarded in
    SLEEPING = "sleeping"  # /sleep in progress
    ASLEEP = "asleep"
    WAKING = "waking"  # wake + warm-up in progress
    FAILED = "failed"


ALLOWED: dict[BackendState, frozenset[BackendState]] = {
    BackendState.UNKNOWN: frozenset(
        {BackendState.READY, BackendState.ASLEEP, BackendState.FAILED, BackendState.SLEEPING}
    ),
    BackendState.READY: frozenset({BackendState.SLEEPING, BackendState.FAILED}),
    BackendState.SLEEPING: frozenset(
        {BackendState.ASLEEP, BackendState.READY, BackendState.FAILED}
    ),
    BackendState.ASLEEP: frozenset({BackendState.WAKING, BackendState.FAILED}),
    BackendState.WAKING: frozenset({BackendState.READY, BackendState.FAILED}),
    BackendState.FAILED: frozenset(),
}
