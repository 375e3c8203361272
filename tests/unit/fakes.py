"""The clock and the processes of the fast layer: LoopClock and FakeProcess.

`LoopClock` reads the running event loop's time, so that under looptime (virtual time) the
proxy's durations, deadlines and "last used" agree with `asyncio.timeout` and `asyncio.sleep`.
`FakeProcess` plays one supervised vLLM process: starting it powers its FakeServer on (after
`boot_s` of loop time), its exit - a `crash()`, a kill, a stop - powers it off, so that calls in
flight fail and new ones are refused, as with a real process that died. Each start, exit and
kill is noted in the FakeVllm's log, between the calls.
"""

from __future__ import annotations

import asyncio
import itertools

from tests.unit.fake_vllm import FakeServer, FakeVllm

EPOCH = 1_800_000_000.0  # wall() at loop time 0
_pids = itertools.count(40_000)


class LoopClock:
    """monotonic() is the running loop's time(); wall() is a fixed epoch plus that."""

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def wall(self) -> float:
        return EPOCH + self.monotonic()


class _Run:
    """One start of a process: its pid, and its exit status once it exited."""

    def __init__(self) -> None:
        self.pid = next(_pids)
        self.code: int | None = None
        self.exited = asyncio.Event()


class FakeProcess:
    """Implements proxy.backends.process.Process for one FakeServer."""

    def __init__(self, vllm: FakeVllm, server: FakeServer, *, boot_s: float = 0.0) -> None:
        self._vllm = vllm
        self.server = server
        self.boot_s = boot_s  # loop time from start() until the server answers /health
        self.exit_on_start: int | None = None  # the next starts exit at once with this code
        self.start_raises: OSError | None = None  # the next starts fail to spawn (no such file)
        self.unkillable = False  # SIGKILL does not reap it (an engine stuck in the driver)
        self.release_pids: set[int] = set()  # what the release wait watches after its end
        self.stopping = False
        self.starts = 0
        self.kills = 0
        self._run: _Run | None = None
        self._boot: asyncio.TimerHandle | None = None
        self._lines: list[str] = []

    @property
    def running(self) -> bool:
        return self._run is not None and self._run.code is None

    @property
    def returncode(self) -> int | None:
        return None if self._run is None else self._run.code

    @property
    def pid(self) -> int | None:
        return None if self._run is None else self._run.pid

    def tail(self) -> list[str]:
        return list(self._lines)

    def pids(self) -> set[int]:
        return set(self.release_pids)  # none but a test's: nothing real to watch

    def collect(self) -> None:
        pass

    async def start(self) -> None:
        assert not self.running, "started twice"
        if self.start_raises is not None:  # as create_subprocess_exec: nothing was started
            raise self.start_raises
        self.starts += 1
        self.stopping = False
        self._run = _Run()
        self._lines = [f"INFO Starting vLLM server for {self.server.name}"]
        self._vllm.note(self.server.name, "START")
        if self.exit_on_start is not None:
            self._lines.append("ValueError: boom: no such model")
            self._exit(self.exit_on_start)
        elif self.boot_s == 0:
            self.server.power_on()
        else:
            loop = asyncio.get_running_loop()
            self._boot = loop.call_later(self.boot_s, self.server.power_on)

    def _exit(self, code: int) -> None:
        assert self._run is not None
        if self._boot is not None:
            self._boot.cancel()
            self._boot = None
        self._run.code = code
        self.server.power_off()
        self._vllm.note(self.server.name, f"EXIT {code}")
        self._run.exited.set()

    async def wait(self) -> int:
        run = self._run
        assert run is not None, "never started"  # as ManagedProcess.wait
        await run.exited.wait()
        assert run.code is not None
        return run.code

    def kill(self) -> None:
        self.stopping = True
        self.kills += 1
        if self.running and not self.unkillable:
            self._exit(-9)

    async def stop(self, grace_s: float) -> int | None:
        if self._run is None:
            return None
        self.stopping = True
        if self.running:
            self._exit(-15)
        return await self.wait()

    def crash(self, code: int = -9) -> None:
        """The process dies on its own (OOM killer, a segfault): not stopping."""
        assert self.running, "not running"
        self._exit(code)
