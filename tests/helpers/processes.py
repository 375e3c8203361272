"""Test helpers around real processes: emulators (the launcher lives in the package), the CLI as a
subprocess (`launched`), free loopback ports, liveness by PID and the external tools a test needs."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from proxy.emulator.launcher import EmulatorProcess, running_emulator, spawn_emulator

__all__ = [
    "EmulatorProcess",
    "Spawn",
    "alive",
    "emulator_stats",
    "free_port",
    "launched",
    "required_tool",
    "running_emulator",
    "spawn_emulator",
]

# the `spawn` fixture of tests/emulator/conftest.py
Spawn = Callable[..., EmulatorProcess]


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


@contextlib.contextmanager
def launched(args: list[str], ready_prefix: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run `vllm-switch ARGS`, wait for the line starting with `ready_prefix`, yield its URL.

    Its output is read on until it exits (its last lines kept), so a chatty server never
    blocks on a full pipe."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.strip().startswith(ready_prefix):
                tail: deque[str] = deque(seen, maxlen=200)
                reader = threading.Thread(target=tail.extend, args=(proc.stdout,), daemon=True)
                reader.start()
                yield proc, line.split()[-1].removesuffix("/v1")
                break
        else:
            raise AssertionError("never became ready:\n" + "".join(seen))
    finally:
        stop_group(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def stop_group(proc: subprocess.Popen[str]) -> None:
    """End a `vllm-switch` this test started in a session of its own: SIGTERM first - `serve`
    stops its supervised backends and `demo` its emulators (each in a session of its own, so
    a SIGKILL of this group alone would leave them running) - SIGKILL after 30 s; reaped."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def required_tool(name: str, hint: str) -> str:
    """The path of an external tool: the test fails under CI without it, and is skipped
    elsewhere (`hint` says how to get it)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI ({hint})")
        pytest.skip(f"{name} not installed ({hint})")
    return path
