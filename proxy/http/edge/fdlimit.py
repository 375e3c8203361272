"""Running out of file descriptors: the open-file limit, the connection cap derived from it, and
logging that stays quiet while the limit is hit.

Measured (uvloop 0.23, libuv 1.48, Python 3.11): when `accept()` fails with EMFILE, libuv accepts
and closes the pending connections with a reserve descriptor ("emfile trick") and tells Python
nothing: the clients see a connection closed (or reset) without a response, and nothing is
logged. asyncio's selector loop instead reports every failed attempt to the loop's exception
handler, up to `backlog` times per loop iteration, each retry scheduling more: 200 MB of log in
30 s under a 1,024 open-file limit. So the proxy keeps its client connections below the limit
(`connection_cap`: each client connection may need an upstream one as well) and answers the
ones beyond with a 503 (proxy/http/edge/protocol.py); `AcceptErrorHandler` rate-limits what the loop reports.

State: a `RateLimitedLog` owns its per-key counters; an `AcceptErrorHandler` owns one of those
and is installed on one loop by whoever made the loop (proxy/http/edge/protocol.py: `EdgeConfig`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# descriptors kept for everything that is not a connection: listener, log, epoll, pipes, ...
FD_RESERVE = 64
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_NR_OPEN = Path("/proc/sys/fs/nr_open")  # the kernel's ceiling when the hard limit is unlimited


def raise_open_file_limit(log: logging.Logger) -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit (systemd's soft default is 1,024).

    Returns (before, after) and logs both. A failure to raise is logged, not raised."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(_NR_OPEN.read_text())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    after = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    log.info("open-file limit: %d (was %d, hard limit %d)", after, soft, hard)
    return soft, after


def connection_cap(max_connections: int, soft_limit: int | None = None) -> int:
    """How many client connections to hold: `max_connections`, but never more than the open-file
    limit allows when each connection also holds one upstream connection."""
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, (soft_limit - FD_RESERVE) // 2))


class RateLimitedLog:
    """At most one line per key and interval; the next line says how many were left out."""

    def __init__(
        self,
        log: logging.Logger,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._interval = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(
        self, key: str, message: str, *args: object, exc: BaseException | None = None
    ) -> bool:
        """Log `message % args` unless `key` was logged within the interval; True if logged."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        left_out = self._suppressed.pop(key, 0)
        if left_out:
            message += " (%d more like it since the last such line, %.0f s ago)"
            args = (*args, left_out, now - last if last is not None else 0.0)
        self._last[key] = now
        self._log.warning(message, *args, exc_info=exc)
        return True


class AcceptErrorHandler:
    """A loop exception handler: accept() failing for lack of descriptors or memory is logged
    once per interval with a count; everything else goes to the handler it replaced."""

    def __init__(self, log: RateLimitedLog) -> None:
        self._log = log
        self._previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in OUT_OF_RESOURCES:
            self._log.warning(
                "accept",
                "cannot accept connections: %s (%s); new clients are refused until descriptors "
                "free up (raise the open-file limit or lower limits.max_connections)",
                exc.strerror,
                context.get("message", "accept failed"),
            )
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)
