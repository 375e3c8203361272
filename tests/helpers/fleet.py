"""Emulated vLLM servers on one fake GPU for the gateway tests, and a proxy config for them.

`Fleet` owns the emulators one test starts (the `fleet` fixture of tests/proxy/conftest.py stops
them by PID and checks the invariants at teardown). Every emulator command line comes from
`emulator_args`, a preset of `emulator_argv` (proxy/emulator/launcher.py): the fake GPU `GPU` of
80 GiB, instant timing, sleep mode on, and a utilisation at which only one model fits awake.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.config import ProxyConfig
from proxy.emulator.launcher import (
    EmulatorProcess,
    bootstrap_sequentially,
    emulator_argv,
    spawn_emulator,
)
from tests.helpers.processes import emulator_stats, free_port

GPU = "g0"


def emulator_args(
    name: str,
    ledger: Path,
    *extra: str,
    util: float = 0.55,
    port: int | None = None,
    startup_s: float | None = None,
) -> list[str]:
    """One model on the shared 80 GiB fake GPU: at util 0.55 only one fits awake."""
    return emulator_argv(
        name,
        ledger_dir=ledger,
        gpu=GPU,
        gpu_memory_gib=80,
        util=util,
        max_model_len=4096,
        timing="instant",
        startup_s=startup_s,
        port=port,
        extra=extra,
    )


@dataclass
class Fleet:
    workdir: Path
    emulators: dict[str, EmulatorProcess] = field(default_factory=dict)

    @property
    def ledger_dir(self) -> Path:
        return self.workdir / "ledger"

    def start(self, *specs: tuple[str, Sequence[str]]) -> None:
        """Start (name, extra emulator args) servers one by one; the last stays awake."""
        servers = [(name, emulator_args(name, self.ledger_dir, *extra)) for name, extra in specs]
        for emu in bootstrap_sequentially(self.workdir, servers):
            self.emulators[emu.port_file.stem] = emu

    def spawn(self, name: str, args: Sequence[str]) -> EmulatorProcess:
        emu = spawn_emulator(self.workdir, args, name=name)
        self.emulators[name] = emu
        emu.wait_listening()
        return emu

    def spawn_later(self, name: str, args: Sequence[str]) -> EmulatorProcess:
        """Start without waiting: on a port chosen now, so its URL is known while it starts."""
        port = free_port()
        emu = spawn_emulator(self.workdir, args, name=name, port=port)
        emu.port = port
        self.emulators[name] = emu
        return emu

    def stop_all(self) -> None:
        for emu in self.emulators.values():
            emu.stop()

    def url(self, name: str) -> str:
        return self.emulators[name].url

    def stats(self, name: str) -> dict[str, Any]:
        return emulator_stats(self.url(name))

    def counters(self, name: str) -> dict[str, int]:
        return self.stats(name)["stats"]  # type: ignore[no-any-return]

    def ledger(self) -> dict[str, Any]:
        path = self.ledger_dir / f"{GPU}.json"
        data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"oom_events": 0}
        return data


# the switching mechanics under test (drains, failures, supervision, streams) want each switch to
# start the moment a request waits; the default policy's holds are tested in tests/unit and in
# tests/proxy/test_scheduling.py, which ask for it
MECHANICS = {"policy": "fifo"}


def config_for(fleet: Fleet, models: Sequence[dict[str, Any]], **top: Any) -> ProxyConfig:
    """A ProxyConfig for emulators of `fleet`: each model dict needs `name`; url/gpu are filled.
    GPU groups schedule `fifo` unless they say otherwise (see MECHANICS)."""
    full = [{"gpu": GPU, **m, "url": m.get("url") or fleet.url(m["name"])} for m in models]
    gpus = [
        {"scheduling": MECHANICS, **g} for g in top.pop("gpus", [{"name": GPU, "max_awake": 1}])
    ]
    return ProxyConfig.model_validate({"models": full, "gpus": gpus, **top})
