"""Start and stop vLLM (or emulator) servers for benchmarks; stopped by PID, never by name."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerSpec:
    name: str
    model: str  # path or hub name
    util: float
    extra: list[str] = field(default_factory=list)
    served: tuple[str, ...] = ()  # --served-model-name; default: (name,)


@dataclass
class Server:
    spec: ServerSpec
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 900) -> float:
        """Seconds until /health answered 200 (vLLM only listens once ready)."""
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.spec.name} exited with {self.proc.returncode}; see {self.log}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"{self.spec.name} not ready after {timeout_s}s")
            time.sleep(0.25)

    def stop(self, grace_s: float = 30) -> float:
        t0 = time.monotonic()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return time.monotonic() - t0


def server_argv(spec: ServerSpec, server_cmd: str, common: list[str], port: int) -> list[str]:
    """The command line of one server (also a supervised model's `command` in a proxy config)."""
    return [
        *shlex.split(server_cmd),
        "--model",
        spec.model,
        "--served-model-name",
        *(spec.served or (spec.name,)),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--gpu-memory-utilization",
        str(spec.util),
        *common,
        *spec.extra,
    ]


def start(
    spec: ServerSpec,
    server_cmd: str,
    common: list[str],
    logdir: Path,
    *,
    port: int | None = None,
    dev_mode: bool = True,
) -> Server:
    """Start one server in its own session (stopped by `Server.stop`, by its group's id)."""
    port = port or free_port()
    argv = server_argv(spec, server_cmd, common, port)
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{spec.name}-{port}.log"
    env = dict(os.environ)
    env.pop("VLLM_SERVER_DEV_MODE", None)
    if dev_mode:
        env["VLLM_SERVER_DEV_MODE"] = "1"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return Server(spec, proc, port, log)
