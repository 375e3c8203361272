"""Real emulator processes for tests: start on a kernel-chosen port, stop by PID.

`EmulatorProcess` owns one `vllm-switch emulate` child in its own process group. It is stopped
by signalling that group (never by name). Readiness is the port file the emulator writes once
its socket listens, so there is no port race and no fixed sleep.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

START_TIMEOUT_S = 30.0


@dataclass
class EmulatorProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    port_file: Path
    port: int | None = None

    @property
    def url(self) -> str:
        assert self.port is not None, "not listening yet"
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_listening(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.port_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"emulator exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"emulator did not listen within {timeout_s}s:\n{self.log()}")
            time.sleep(0.01)
        self.port = int(self.port_file.read_text())

    def wait_exit(self, timeout_s: float = START_TIMEOUT_S) -> int:
        return self.proc.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def spawn_emulator(
    workdir: Path,
    args: Sequence[str],
    *,
    name: str = "emu",
    dev_mode: bool = True,
    env: dict[str, str] | None = None,
    port: int = 0,
) -> EmulatorProcess:
    """Start `vllm-switch emulate ARGS --port PORT` (0: kernel-chosen) with its log and port file under `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / f"{name}.port"
    log_path = workdir / f"{name}.log"
    port_file.unlink(missing_ok=True)
    child_env = {**os.environ, **(env or {})}
    child_env.pop("VLLM_SERVER_DEV_MODE", None)
    if dev_mode:
        child_env["VLLM_SERVER_DEV_MODE"] = "1"
    if env and "VLLM_SERVER_DEV_MODE" in env:
        child_env["VLLM_SERVER_DEV_MODE"] = env["VLLM_SERVER_DEV_MODE"]
    argv = [
        sys.executable,
        "-m",
        "proxy",
        "emulate",
        *args,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--emu-port-file",
        str(port_file),
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=child_env, start_new_session=True
        )
    return EmulatorProcess(proc=proc, log_path=log_path, port_file=port_file)


@contextlib.contextmanager
def running_emulator(
    workdir: Path, args: Sequence[str], **kwargs: object
) -> Iterator[EmulatorProcess]:
    emu = spawn_emulator(workdir, args, **kwargs)  # type: ignore[arg-type]
    try:
        emu.wait_listening()
        yield emu
    finally:
        emu.stop()


def emulator_stats(url: str) -> dict[str, object]:
    stats: dict[str, object] = httpx.get(f"{url}/_emulator/stats", timeout=10).json()
    return stats
