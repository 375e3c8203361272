"""Test helpers around real emulator processes (the launcher lives in the package)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx

from proxy.emulator.launcher import EmulatorProcess, running_emulator, spawn_emulator

__all__ = [
    "EmulatorProcess",
    "alive",
    "emulator_stats",
    "free_port",
    "running_emulator",
    "spawn_emulator",
]


def emulator_stats(url: str) -> dict[str, object]:
    stats: dict[str, object] = httpx.get(f"{url}/_emulator/stats", timeout=10).json()
    return stats


def free_port() -> int:
    """A loopback port that was free a moment ago (for URLs needed before a server listens)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
