"""Fixtures and hooks of the gateway tests (the helpers they use live in tests/helpers/).

`fleet` starts emulators (`tests.helpers.fleet.Fleet`) and, at teardown, checks two of the
design's invariants on every test that used it:
  1. memory: no wake ever failed for lack of fake GPU memory (ledger `oom_events == 0`);
  2. routing: no request ever reached a sleeping backend (`requests_queued_while_asleep == 0`).
Tests that inject those very faults opt out with `@pytest.mark.faults`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvloop

from tests.helpers.fleet import Fleet

# the upstream client's tests run on both event loops: `vllm-switch serve` runs uvloop, whose
# transports differ from asyncio's (connection_made timing, pause/resume, socket objects)
BOTH_LOOPS = {"tests.proxy.test_transport", "tests.proxy.test_upstream_edges"}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    module = getattr(item, "module", None)
    if module is not None and module.__name__ in BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture
def fleet(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    try:
        yield f
        if request.node.get_closest_marker("faults") is None:
            assert f.ledger()["oom_events"] == 0, "a wake failed for lack of GPU memory"
            for name, emu in f.emulators.items():
                if emu.proc.poll() is None:
                    queued = f.counters(name).get("requests_queued_while_asleep", 0)
                    assert queued == 0, f"{queued} request(s) reached {name} while it slept"
    finally:
        f.stop_all()
