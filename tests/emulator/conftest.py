"""Emulator-only tests: the fake GPU ledger, fault injection, start-up and death."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.processes import EmulatorProcess, spawn_emulator

Spawn = Callable[..., EmulatorProcess]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start emulators sharing one ledger dir; every one is stopped by PID at teardown."""
    started: list[EmulatorProcess] = []

    def _spawn(
        *args: str, name: str = "emu", instant: bool = True, **kwargs: object
    ) -> EmulatorProcess:
        base = [
            "m",
            "--served-model-name",
            name,
            "--emu-ledger-dir",
            str(tmp_path / "ledger"),
            "--emu-startup-s",
            "0",
        ]
        if instant:
            base += ["--emu-timing", "instant"]
        emu = spawn_emulator(tmp_path, [*base, *args], name=name, **kwargs)  # type: ignore[arg-type]
        started.append(emu)
        return emu

    yield _spawn
    for emu in started:
        emu.stop()
