"""`vllm-switch serve` as a process of the test's own, for tests that kill it or pull its working
directory away: started in a directory of the test's choosing, its output kept for assertions,
stopped by its PID, and the backend process groups it reported remembered so that a test can
check - and its teardown make sure - that none is left alive.

State: `ServeProcess` owns one `serve` process and the output a reader thread appends to;
`BackendGroups` owns the set of process groups seen (the test that made them owns both).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.processes import stop_group

REPO = Path(__file__).resolve().parents[2]
READY_LINE = "vllm-switch listening on"


def group_alive(group: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] not in ("Z", "X"):
            found.append(int(entry))
    return found


async def poll(check: Callable[[], Awaitable[bool]], within_s: float, what: str) -> float:
    """Await `check` (a condition, not a delay) until it is true; the seconds it took."""
    t0 = time.monotonic()
    while not await check():
        if time.monotonic() - t0 > within_s:
            raise AssertionError(f"{what}: not within {within_s:g}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


@dataclass
class BackendGroups:
    """Every backend process group a test saw (a supervised backend's PID is its group's)."""

    seen: set[int] = field(default_factory=set)

    def note(self, status: dict[str, Any]) -> list[int]:
        pids = [m["process"]["pid"] for m in status["models"] if m["process"]]
        self.seen.update(p for p in pids if p is not None)
        return [p for p in pids if p is not None]

    def alive(self) -> list[int]:
        return [g for g in sorted(self.seen) if group_alive(g)]

    def kill_leftovers(self) -> None:
        """SIGKILL what is still alive of each group seen (teardown of a failed test)."""
        for group in self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)


@dataclass
class ServeProcess:
    proc: subprocess.Popen[str]
    url: str
    groups: BackendGroups
    lines: list[str]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return "".join(self.lines)

    async def status(self) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as c:
            status: dict[str, Any] = (await c.get("/admin/status")).json()
        self.groups.note(status)
        return status

    async def model(self, name: str) -> dict[str, Any]:
        status = await self.status()
        found: dict[str, Any] = next(m for m in status["models"] if m["name"] == name)
        return found

    async def ready(self, within_s: float = 60) -> dict[str, Any]:
        """Poll /ready until 200; then the status (its backend groups noted)."""
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as c:

            async def is_ready() -> bool:
                return (await c.get("/ready")).status_code == 200

            await poll(is_ready, within_s, "the proxy ready")
        return await self.status()

    def kill(self) -> None:
        """SIGKILL the proxy alone (by its PID): none of its own cleanup runs."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@contextlib.contextmanager
def serving(
    config: Path, groups: BackendGroups, *, cwd: Path | None = None, start_s: float = 60
) -> Iterator[ServeProcess]:
    """Run `vllm-switch serve --config CONFIG` in `cwd` (the repository is put on PYTHONPATH, so
    the proxy and its emulators import from this checkout wherever they run), yield it once it
    listens. On exit: SIGTERM if it still runs (it stops its backends), SIGKILL after 30 s."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--config", str(config)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    listening = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(READY_LINE):
                listening.set()
        listening.set()  # it exited: stop waiting

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not listening.wait(start_s) or proc.poll() is not None:
            raise AssertionError("vllm-switch serve never listened:\n" + "".join(lines))
        url = next(ln for ln in lines if ln.startswith(READY_LINE)).split()[-1]
        yield ServeProcess(proc, url, groups, lines)
    finally:
        stop_group(proc)
        reader.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
