"""Hooks for the whole suite: the `process` marker, and the guard that keeps it honest.

A test carries `process` when it starts a real process or serves on a socket (the proxy under
uvicorn, emulators, node, prometheus, the CLI as a subprocess, a loopback backend). It gets the
marker in one of three ways:
  - it uses a fixture of PROCESS_FIXTURES (marked here, at collection);
  - its module says `pytestmark = pytest.mark.process` (every test of it starts something);
  - it says `@pytest.mark.process` itself (a module that mixes both kinds).
Every test without the marker runs under a guard: starting a subprocess (`subprocess.Popen`,
`asyncio.create_subprocess_*`, `os.fork`, `os.posix_spawn*`) or listening on a socket fails it at
once, naming the marker. So `pytest -m "not process"` (the fast loop) cannot start one unseen.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.helpers.fleet import Fleet

# virtual time for tests marked `looptime` (a plugin module: loaded here, where `tests` is
# importable, for every test under tests/)
pytest_plugins = ["tests.virtual_time"]

# fixtures that start processes or servers (each where it is defined)
PROCESS_FIXTURES = frozenset(
    {
        "fleet",  # below: emulators on a fake GPU
        "spawn",  # tests/emulator/conftest.py: emulators
        "target",  # tests/conformance/conftest.py: two emulators (or a real vLLM)
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.process)


def _refuse(item: pytest.Item, what: str) -> Callable[..., NoReturn]:
    def refused(*_: Any, **__: Any) -> NoReturn:
        pytest.fail(
            f"{item.nodeid} {what} but is not marked `process`: mark it "
            "(@pytest.mark.process, or pytestmark in its module), or use a fake"
        )

    return refused


GUARDED: tuple[tuple[object, str, str], ...] = (
    (subprocess.Popen, "__init__", "starts a subprocess"),
    (asyncio, "create_subprocess_exec", "starts a subprocess"),
    (asyncio, "create_subprocess_shell", "starts a subprocess"),
    (os, "fork", "forks"),
    (os, "posix_spawn", "spawns a process"),
    (os, "posix_spawnp", "spawns a process"),
    (socket.socket, "listen", "listens on a socket"),
)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    """Setup, call and teardown of a test without `process` run under the guard."""
    if item.get_closest_marker("process") is not None:
        return (yield)
    with pytest.MonkeyPatch.context() as patch:
        for owner, name, what in GUARDED:
            patch.setattr(owner, name, _refuse(item, what))
        return (yield)


@pytest.fixture
def fleet(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """Emulators on one fake GPU (`tests.helpers.fleet.Fleet`), stopped by PID at teardown, and
    two of the design's invariants checked on every test that used it: memory - no wake failed
    for lack of fake GPU memory (ledger `oom_events == 0`); routing - no request reached a
    sleeping backend (`requests_queued_while_asleep == 0`). Tests that inject those very
    faults opt out with `@pytest.mark.faults`."""
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
