"""Processes a benchmark starts: each in its own process group, stopped by its PID (never by
name); their CPU time; py-spy attached to one of them; the machine they ran on."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time of `pid` and every descendant still alive."""
    total, todo = 0.0, [pid]
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(entry.name))
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            total += _process_cpu(p)
        todo.extend(kids.get(p, []))
    return total


def _process_cpu(pid: int) -> float:
    """Nanosecond-precise CPU time of a process's live threads (schedstat), else ticks."""
    try:
        return sum(
            int((task / "schedstat").read_text().split()[0]) / 1e9
            for task in Path(f"/proc/{pid}/task").iterdir()
        )
    except (OSError, ValueError, IndexError):  # no schedstat in this kernel
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS


@contextlib.contextmanager
def server(argv: list[str], log: Path, env: dict[str, str], cpus: set[int] | None) -> Iterator[int]:
    """Run a server in its own process group; stop it (by its PID's group) on exit."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )
    try:
        if cpus:
            os.sched_setaffinity(proc.pid, cpus)
        yield proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_ready(url: str, path: str, log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return
        time.sleep(0.2)  # polling another process's start-up
    raise RuntimeError(f"{url} never became ready:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def profiled(pid: int | None, out: Path) -> Iterator[None]:
    """py-spy samples the vllm-switch process for the whole measurement."""
    assert pid is not None
    spy = subprocess.Popen(
        [
            "py-spy",
            "record",
            "--pid",
            str(pid),
            "--format",
            "speedscope",
            "--output",
            str(out),
            "--rate",
            "250",
        ]
    )
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)


def version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except OSError:
        return "unknown"
    return (
        (out.stdout.strip() or out.stderr.strip()).splitlines()[-1]
        if (out.stdout or out.stderr)
        else "unknown"
    )


def machine(proxy_cpus: set[int] | None = None) -> dict[str, object]:
    """What a result file records about where it was measured."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "proxy_pinned_to_cpus": sorted(proxy_cpus) if proxy_cpus else None,
    }
