"""ManagedProcess: one backend process the proxy started - its process group, log and exit.

Owns the child (started in its own session, so vLLM's engine and worker processes form one
process group), a pump task copying its output to a log file and a ring buffer of the last lines
(shown in /admin/status), and its exit status. Stopping signals the whole group: SIGTERM, then
SIGKILL after a grace period; it is always reaped. Never kills anything by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import psutil

from proxy.backends import reaper

log = logging.getLogger(__name__)
REAPER = reaper.__file__  # run as a script (-I): stdlib only, nothing of the proxy imported
KILL_FALLBACK_S = 15.0  # a reaper that did not end its group (it waits up to 10 s): SIGKILL all


class Process(Protocol):
    """What the supervisor needs of one backend process (ManagedProcess; a fake in tests)."""

    stopping: bool

    @property
    def running(self) -> bool: ...

    @property
    def returncode(self) -> int | None: ...

    @property
    def pid(self) -> int | None: ...

    def tail(self) -> list[str]: ...

    def pids(self) -> set[int]:
        """Every pid seen to belong to it (for the GPU memory release wait after its end)."""
        ...

    def collect(self) -> None:
        """Note the pids that belong to it now (it is up: its workers run)."""
        ...

    async def start(self) -> None: ...

    async def wait(self) -> int: ...

    def kill(self) -> None: ...

    async def stop(self, grace_s: float) -> int | None: ...


class ManagedProcess:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: Path | None,
        *,
        cwd: Path | None = None,
        grace_s: float = 30.0,
        tail: int = 40,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self._cwd = cwd
        self._grace_s = grace_s
        self._env = dict(env)
        self._log_path = log_path
        self._tail: deque[str] = deque(maxlen=tail)
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self._seen: set[int] = set()  # its pids, collected once it is up and when it is stopped
        self._fallback: asyncio.TimerHandle | None = None
        self.stopping = False

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def tail(self) -> list[str]:
        return list(self._tail)

    def pids(self) -> set[int]:
        return self._seen | ({self._proc.pid} if self._proc is not None else set())

    def collect(self) -> None:
        """Note the reaper's descendants (a worker that left the group included) while they
        run: after the stop they are what the GPU memory release wait watches."""
        if self._proc is None:
            return
        with contextlib.suppress(psutil.Error):
            self._seen.update(p.pid for p in psutil.Process(self._proc.pid).children(True))

    async def start(self) -> None:
        """Spawn under the reaper (it dies with the proxy, and takes its group along), in the
        working directory `cwd` (by path), with the proxy's environment, the model's `env` and
        VLLM_SERVER_DEV_MODE=1, for this child alone."""
        env = {**os.environ, **self._env, "VLLM_SERVER_DEV_MODE": "1"}
        self.stopping = False
        self._tail.clear()
        self._seen.clear()
        if self._cwd is not None and not self._cwd.is_dir():
            raise FileNotFoundError(f"working directory {self._cwd} does not exist (models[].cwd)")
        reaper = [sys.executable, "-I", REAPER, "--parent", str(os.getpid())]
        self._proc = await asyncio.create_subprocess_exec(
            *reaper,
            "--grace",
            f"{self._grace_s:g}",
            "--",
            *self.argv,
            env=env,
            cwd=self._cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        log.info("started %s (pid %d): %s", self.name, self._proc.pid, " ".join(self.argv))
        self._pump = asyncio.create_task(self._copy_output(self._proc), name=f"log:{self.name}")

    async def _copy_output(self, proc: asyncio.subprocess.Process) -> None:
        """Every line to the log file and the tail. A log file that cannot be opened is an
        error in the proxy's log, never a reason to stop reading: a child whose pipe is not
        read blocks once the pipe is full."""
        assert proc.stdout is not None
        sink = None
        if self._log_path is not None:
            try:
                self._log_path.parent.mkdir(parents=True, exist_ok=True)
                sink = self._log_path.open("ab")
            except OSError as exc:
                log.error("%s: cannot write its log %s: %s", self.name, self._log_path, exc)
                self._tail.append(f"(vllm-switch: cannot write the log {self._log_path}: {exc})")
        try:
            while line := await proc.stdout.readline():
                if sink is not None:
                    sink.write(line)
                    sink.flush()
                self._tail.append(line.decode(errors="replace").rstrip())
        finally:
            if sink is not None:
                sink.close()

    async def wait(self) -> int:
        assert self._proc is not None
        code = await self._proc.wait()
        if self._pump is not None:
            await asyncio.gather(self._pump, return_exceptions=True)
        return code

    def kill(self) -> None:
        """SIGKILL everything the backend runs now (a wedged engine; shutdown past its grace):
        the reaper is told (SIGUSR1) and kills all of its group but itself, reaps them and
        exits - no zombie is left to a container's PID 1. Should it not be gone within
        KILL_FALLBACK_S, the whole group, the reaper included, gets SIGKILL."""
        self.stopping = True
        if self._proc is None or self._proc.returncode is not None:
            return
        self.collect()
        group = self._proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(group, signal.SIGUSR1)
        proc = self._proc

        def fallback() -> None:
            if proc.returncode is None:
                log.warning("%s: the reaper did not end its group: SIGKILL to it all", self.name)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)

        if self._fallback is not None:
            self._fallback.cancel()
        self._fallback = asyncio.get_running_loop().call_later(KILL_FALLBACK_S, fallback)

    async def stop(self, grace_s: float) -> int | None:
        """SIGTERM to the reaper (it ends its group: SIGTERM, SIGKILL after its grace), SIGKILL
        all of it after `grace_s`, reap. Returns the exit code."""
        if self._proc is None:
            return None
        self.stopping = True
        if self._proc.returncode is None:
            self.collect()
            with contextlib.suppress(ProcessLookupError):  # the reaper passes it to its group
                os.kill(self._proc.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(grace_s):
                    await self._proc.wait()
            except TimeoutError:
                self.kill()
        return await self.wait()
