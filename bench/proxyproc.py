"""`vllm-switch serve` as a child of a benchmark: started with a config, its URL once it listens,
ready or not, stopped (SIGTERM) or killed (SIGKILL) by its PID, never by name.

`ProxyProcess` owns one proxy child in a session of its own (so a benchmark's Ctrl-C does not
reach it first) and the config and log files it writes for it; nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml


class ProxyProcess:
    def __init__(self, config: dict[str, Any], path: Path, *, env: dict[str, str] | None = None):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        self.config_path = path
        self.log = path.with_suffix(".log")
        with self.log.open("w") as out:  # a file, not a pipe nobody drains (a full pipe stalls)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "proxy", "serve", "--config", str(path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        self.url = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_listening(self, timeout_s: float = 60) -> str:
        """The proxy's URL, from the first line of its log ("... listening on URL")."""
        deadline = time.monotonic() + timeout_s
        while True:
            for line in self.log.read_text().splitlines():
                if line.startswith("vllm-switch listening on "):
                    self.url = line.split()[-1]
                    return self.url
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"proxy did not start: {self.log.read_text()[-3000:]}")
            time.sleep(0.05)  # polling another process's start-up, bounded by the deadline

    def wait_ready(self, timeout_s: float = 60) -> float:
        """Seconds until /ready answered 200 (bootstrap and reconciliation done)."""
        t0 = time.monotonic()
        if not self.url:
            self.wait_listening(timeout_s)
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/ready", timeout=5).status_code == 200:
                    return time.monotonic() - t0
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited: {self.log.read_text()[-3000:]}")
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"proxy not ready after {timeout_s:g} s")
            time.sleep(0.1)  # polling another process's start-up, bounded by the deadline

    def stop(self, timeout_s: float = 120) -> float:
        """SIGTERM (a graceful shutdown: it stops what it supervises); seconds until it exited."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return time.monotonic() - t0

    def kill(self) -> None:
        """SIGKILL to the proxy alone (not its group): what a crash or the OOM killer does."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@contextlib.contextmanager
def serving(config: dict[str, Any], path: Path) -> Iterator[str]:
    """A proxy with `config` for the block's length; its URL once /ready."""
    p = ProxyProcess(config, path)
    try:
        p.wait_ready()
        yield p.url
    finally:
        p.stop(30)
