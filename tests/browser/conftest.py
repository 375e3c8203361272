"""Fixtures of the browser tests: `fleet`, as in tests/proxy/conftest.py - emulators on one fake
GPU, stopped by PID at teardown, with the same two invariants checked on every test that used
it (no wake failed for lack of memory; no request reached a sleeping backend)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.fleet import Fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    try:
        yield f
        assert f.ledger()["oom_events"] == 0, "a wake failed for lack of GPU memory"
        for name, emu in f.emulators.items():
            if emu.proc.poll() is None:
                queued = f.counters(name).get("requests_queued_while_asleep", 0)
                assert queued == 0, f"{queued} request(s) reached {name} while it slept"
    finally:
        f.stop_all()
