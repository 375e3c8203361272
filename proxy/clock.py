"""Clock: where the switching core and the backends read the time, so tests can drive it.

Two readings: `monotonic()` for every duration, deadline and "last used" (never goes back), and
`wall()` for timestamps shown to people (`awake_since`). Deadlines of awaits are asyncio's
(`asyncio.timeout`, the event loop's clock); a test that runs the loop on virtual time
(tests/unit) uses a clock that reads that same loop time, so both agree. Stateless.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


class SystemClock:
    """The real clock: `time.monotonic()` and `time.time()`."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()
