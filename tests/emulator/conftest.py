"""Emulator-only tests: the fake GPU ledger, fault injection, start-up and death."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.emulator.launcher import emulator_argv
from tests.helpers.processes import EmulatorProcess, Spawn, spawn_emulator


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start emulators sharing one ledger dir; every one is stopped by PID at teardown.

    `spawn(*ARGS, name=..., instant=True, **spawn_emulator kwargs)`: model `m` served as `name`,
    no sleep mode, no start-up delay, instant timing unless `instant=False`; ARGS go last."""
    started: list[EmulatorProcess] = []

    def _spawn(
        *args: str, name: str = "emu", instant: bool = True, **kwargs: object
    ) -> EmulatorProcess:
        argv = emulator_argv(
            "m",
            served_names=(name,),
            sleep_mode=False,
            ledger_dir=tmp_path / "ledger",
            startup_s=0,
            timing="instant" if instant else None,
            extra=args,
        )
        emu = spawn_emulator(tmp_path, argv, name=name, **kwargs)  # type: ignore[arg-type]
        started.append(emu)
        return emu

    yield _spawn
    for emu in started:
        emu.stop()
