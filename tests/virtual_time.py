"""pytest plugin: a test marked `looptime` runs on an event loop with virtual time.

The loop is looptime's (`looptime.new_event_loop`): `loop.time()` starts at 0 and jumps to the
next timer whenever every task waits, so a 30 s drain deadline or a restart backoff passes at
once and always in the same order. Only looptime's loop is used, not its pytest plugin (which
is disabled in pyproject.toml's addopts): that plugin makes an event loop for every test that
asks for pytest-asyncio's policy fixture, sync tests included, and never closes it, and the
leaked socket pair fails unrelated tests through pytest's unraisable-exception check.
Loaded by tests/conftest.py (`pytest_plugins`). Stateless.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import looptime
import pytest

MARKER = "looptime"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}: run on an event loop with virtual time (tests/virtual_time.py)"
    )
    config.pluginmanager.register(_DefaultLoop(), "virtual-time-default-loop")


class _DefaultLoop:
    """Asks last: the plain asyncio loop, for a test no other hook gave a loop (pytest-asyncio
    wants a mapping from every implementation chain, and the one below may decline)."""

    @pytest.hookimpl(trylast=True)
    def pytest_asyncio_loop_factories(
        self, config: pytest.Config, item: pytest.Item
    ) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
        return {"asyncio": asyncio.new_event_loop}


def virtual_loop() -> asyncio.AbstractEventLoop:
    # idle_timeout: a test that waits on something nothing will ever set (no timer left) fails
    # after 1 real second instead of hanging until pytest-timeout
    return looptime.new_event_loop(start=0.0, idle_timeout=1.0, _enabled=True)


@pytest.hookimpl(tryfirst=True)
def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]] | None:
    if item.get_closest_marker(MARKER) is None:
        return None  # the next hook (a conftest's, or pytest-asyncio's default) decides
    return {"virtual-time": virtual_loop}
