"""AdoptedProcess: the Process the supervisor keeps for a backend it adopted at start-up (a
previous proxy's that outlived it, or one started by hand) - kept like one it launched.

Its exit is seen through a pidfd (Linux; else a poll); it is stopped and killed with everything
it started: its process group when the runtime record says the proxy started that group, else
only its own process tree (a stranger's group - its shell, say - is never signalled). Every
wait is bounded: a process stuck in the driver is given up on after KILL_WAIT_S.

State: each AdoptedProcess owns its pid, the group it may signal, the pids seen to belong to
it (collected at adoption and at each signal: what the GPU memory release wait watches), its
exit once seen, and its pidfd while waited on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

import psutil

from proxy.backends.adoption import Listener
from proxy.backends.host import KILL_WAIT_S

log = logging.getLogger(__name__)
POLL_S = 0.25
UNKNOWN_EXIT = -1  # not our child: its exit status cannot be read


class AdoptedProcess:
    """A backend process the proxy did not launch in this life, kept like one it did."""

    def __init__(self, name: str, listener: Listener, *, owned: bool, reason: str) -> None:
        self.name = name
        self.stopping = False
        self._pid = listener.pid
        self._group = listener.group if owned else None
        self._started = listener.started
        self._reason = reason
        self._code: int | None = None
        self.seen: set[int] = {listener.pid}  # its pids, for the GPU memory release wait
        self._seen_at: dict[int, float] = {}  # pid: start time, of each process seen to be its
        self._members()  # its engine and workers, now, while they run

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def group(self) -> int | None:
        return self._group

    @property
    def running(self) -> bool:
        return self._alive()

    def _alive(self) -> bool:
        if self._code is not None:
            return False
        try:
            p = psutil.Process(self._pid)
            alive = p.status() != psutil.STATUS_ZOMBIE and abs(p.create_time() - self._started) < 1
        except psutil.Error:
            alive = False
        if not alive:
            self._code = UNKNOWN_EXIT
        return alive

    @property
    def returncode(self) -> int | None:
        return None if self.running else self._code

    def pids(self) -> set[int]:
        return set(self.seen)

    def collect(self) -> None:
        self._members()

    def tail(self) -> list[str]:
        return [f"adopted at start-up (pid {self._pid}): {self._reason}; its output is not ours"]

    async def start(self) -> None:
        raise RuntimeError("an adopted process is not started by the proxy")

    async def wait(self) -> int:
        """Until it exits: its pidfd becomes readable (Linux), else a poll."""
        if not self._alive():
            return UNKNOWN_EXIT
        try:
            fd = os.pidfd_open(self._pid)
        except (AttributeError, OSError):
            while self._alive():  # noqa: ASYNC110 - no pidfd: nothing to wait on but a poll
                await asyncio.sleep(POLL_S)
            return UNKNOWN_EXIT
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not gone.done():
                gone.set_result(None)

        loop.add_reader(fd, readable)
        try:
            if self._alive():  # it may have gone between the check and the pidfd
                await gone
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        self._code = UNKNOWN_EXIT
        return UNKNOWN_EXIT

    def _members(self) -> list[psutil.Process]:
        """It and its descendants now; each is noted (pid and start time) for later."""
        try:
            me = psutil.Process(self._pid)
            found = [me, *me.children(recursive=True)]
        except psutil.Error:
            found = []
        for p in found:
            with contextlib.suppress(psutil.Error):
                self._seen_at.setdefault(p.pid, p.create_time())
        self.seen.update(self._seen_at)
        return found

    def _leftovers(self) -> list[psutil.Process]:
        """Processes seen to be its that still run (the same processes: same start times)."""
        left = []
        for pid, started in self._seen_at.items():
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if abs(p.create_time() - started) < 0.01 and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(p)
        return left

    def _signal(self, sig: int) -> None:
        # what runs now and what was seen before: a dead API server (a zombie until its parent
        # reaps it) has no children left to list, while its engine runs on
        members = list({p.pid: p for p in (*self._members(), *self._leftovers())}.values())
        if self._group is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._group, sig)
        for p in members:  # what left the group (or a stranger's whole tree, never its group)
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)

    def kill(self) -> None:
        self.stopping = True
        self._signal(signal.SIGKILL)

    def end_leftovers(self) -> list[int]:
        """After it died by itself: SIGKILL what is left of it - no reaper does. vLLM 0.26's
        engine core outlives a SIGKILLed API server and keeps its GPU memory (seen on the H200:
        12 GiB held until the release wait gave up). Returns the pids it signalled."""
        left = [p.pid for p in self._leftovers()]
        if left or self._group is not None:
            self._signal(signal.SIGKILL)
        return left

    async def _waited(self, within_s: float) -> bool:
        try:
            async with asyncio.timeout(within_s):
                await self.wait()
        except TimeoutError:
            return False
        return True

    async def wait_killed(self) -> int:
        """After kill(): until it is gone - at most KILL_WAIT_S (then given up on, logged)."""
        if not await self._waited(KILL_WAIT_S):
            log.error(
                "%s: pid %d still runs %.0fs after SIGKILL", self.name, self._pid, KILL_WAIT_S
            )
        return UNKNOWN_EXIT

    async def stop(self, grace_s: float) -> int | None:
        """SIGTERM it (its group, or its tree), SIGKILL after `grace_s`; and whatever of it is
        left once it exited (an engine or worker that ignores SIGTERM) is SIGKILLed too."""
        self.stopping = True
        if self._alive():
            self._signal(signal.SIGTERM)
            if not await self._waited(grace_s):
                self.kill()
                await self.wait_killed()
        self._signal(signal.SIGKILL)  # the rest of its group or tree, if any
        return self._code
