"""Backend lifecycle.

    UNKNOWN --reconciled awake--> READY        UNKNOWN --reconciled asleep--> ASLEEP
    UNKNOWN --awake beyond max_awake--> SLEEPING --> ASLEEP
    READY --drain + /sleep + /is_sleeping true--> ASLEEP
    ASLEEP --wake (level 1 or staged level 2) + /is_sleeping false + warm-up--> READY
    any --failed sleep, wake, warm-up or start--> FAILED   (sticky: never woken again in place)
    FAILED --operator reset (attached: /health, /is_sleeping, slept if awake)--> ASLEEP

Supervised backends (a `command` in the config) also have:

    STOPPED --start (own process group), /health, warm-up--> STARTING --> READY
    FAILED --restart after backoff (the process is dead: its memory is free)--> STARTING
    READY, ASLEEP, FAILED, STARTING --proxy shutdown--> STOPPED   (not mid-sleep or mid-wake)

Who moves a backend from one state to another (the full list, with the fields, is in
backend.py): the switching core under the GPU group's lock - the switcher and its transitions
(sleep, wake, start, their failures) and start-up (reconciliation, bootstrap); and, without
that lock, the supervisor's exit watcher (a crash: FAILED, memory free) and shutdown (STOPPED).
Every move is checked against ALLOWED below, and happens between two awaits. Routes and
status only read. Stateless itself: the enum and the table.
"""

from __future__ import annotations

import enum


class BackendState(enum.StrEnum):
    UNKNOWN = "unknown"  # not reconciled yet (proxy start-up, backend still starting)
    STOPPED = "stopped"  # supervised, no process (lazy start, or after shutdown)
    STARTING = "starting"  # supervised process launched, waiting for /health and warm-up
    READY = "ready"  # awake and warmed up: the only state requests are forwarded in
    SLEEPING = "sleeping"  # /sleep in progress
    ASLEEP = "asleep"
    WAKING = "waking"  # wake + warm-up in progress
    FAILED = "failed"


ALLOWED: dict[BackendState, frozenset[BackendState]] = {
    BackendState.UNKNOWN: frozenset(
        {
            BackendState.READY,
            BackendState.ASLEEP,
            BackendState.FAILED,
            BackendState.SLEEPING,
            BackendState.STOPPED,
            BackendState.STARTING,
        }
    ),
    BackendState.STOPPED: frozenset({BackendState.STARTING}),
    BackendState.STARTING: frozenset(
        {BackendState.READY, BackendState.FAILED, BackendState.STOPPED}
    ),
    BackendState.READY: frozenset(
        {BackendState.SLEEPING, BackendState.FAILED, BackendState.STOPPED}
    ),
    BackendState.SLEEPING: frozenset(
        {BackendState.ASLEEP, BackendState.READY, BackendState.FAILED}
    ),
    BackendState.ASLEEP: frozenset(
        {BackendState.WAKING, BackendState.FAILED, BackendState.STOPPED}
    ),
    BackendState.WAKING: frozenset({BackendState.READY, BackendState.FAILED}),
    # STARTING, STOPPED: supervised only; ASLEEP: an operator's reset of an attached backend,
    # confirmed asleep again (switching/operator.py) - never READY: only a wake makes that
    BackendState.FAILED: frozenset(
        {BackendState.STARTING, BackendState.STOPPED, BackendState.ASLEEP}
    ),
}
