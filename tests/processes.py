"""Test helpers around real emulator processes (the launcher lives in the package)."""

from __future__ import annotations

import httpx

from proxy.emulator.launcher import EmulatorProcess, running_emulator, spawn_emulator

__all__ = ["EmulatorProcess", "emulator_stats", "running_emulator", "spawn_emulator"]


def emulator_stats(url: str) -> dict[str, object]:
    stats: dict[str, object] = httpx.get(f"{url}/_emulator/stats", timeout=10).json()
    return stats
