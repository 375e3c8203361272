"""Adoption: what a starting proxy does with a process already listening at a supervised
backend's URL - a previous instance's backend that outlived it, or a vLLM started by hand.

    decide(...)         pure: adopt it, replace it (ours, but another command or unhealthy),
                        refuse (a stranger, or one the proxy cannot see), or start (port free)
    find_listener(url)  the process listening at the URL's port, from psutil (never parsed by
                        hand), with its process group and start time
    AdoptedProcess      the Process the supervisor keeps for an adopted backend: its exit is
                        seen through a pidfd, it is stopped and killed with everything it started

State: each AdoptedProcess owns its pid, the group it may signal (only a group the runtime
record says the proxy started), its descendants seen at a kill, and its pidfd while waited on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import psutil

from proxy.backends.runtime import Record

log = logging.getLogger(__name__)
POLL_S = 0.25
KILL_WAIT_S = 10.0
UNKNOWN_EXIT = -1  # not our child: its exit status cannot be read


@dataclass(frozen=True)
class Listener:
    pid: int
    group: int
    started: float  # seconds since the epoch
    uid: int  # its owner: only a process of the proxy's own user is ever adopted


@dataclass(frozen=True)
class Claim:
    action: Literal["start", "adopt", "replace", "refuse"]
    reason: str
    listener: Listener | None = None
    owned: bool = False  # the runtime record says the proxy started it (its group may be signalled)


def decide(
    *,
    where: str,
    model: str,
    healthy: bool,
    served: tuple[str, ...],
    listener: Listener | None,
    record: Record | None,
    record_alive: bool,
    fingerprint: str,
    adopt: bool,
) -> Claim:
    """What to do with what listens at a supervised backend's URL. `healthy`: /health 200;
    `served`: what its /v1/models lists; `record`: the runtime record for the URL;
    `record_alive`: a process of the record's group still runs."""
    mine = listener is not None and listener.uid == os.getuid()
    ours = (
        record is not None
        and listener is not None
        and mine
        and listener.group == record.group
        and listener.started >= record.started - 1.0  # create times are rounded by the kernel
    )
    if not ours and record_alive:  # ours, but not (yet) listening: a start cut short
        return Claim("replace", "a previous proxy's backend that does not listen", None, True)
    if listener is None and not healthy:
        return Claim("start", "nothing listens there")
    if ours:
        assert record is not None
        if not healthy:
            return Claim(
                "replace", "a previous proxy's backend that is not healthy", listener, True
            )
        if record.fingerprint != fingerprint:
            return Claim(
                "replace", "a previous proxy's backend started from another command", listener, True
            )
        if model not in served:
            return Claim(
                "replace", f"a previous proxy's backend not serving {model!r}", listener, True
            )
        return Claim("adopt", "a previous proxy's backend, same command", listener, True)
    if model in served and healthy:
        if not adopt:
            return Claim(
                "refuse",
                f"a vLLM serving {model!r} already listens at {where}, not started by this "
                "proxy, and the model says adopt: false: stop it, or set adopt: true",
            )
        if listener is None or not mine:
            return Claim(
                "refuse",
                f"a vLLM serving {model!r} listens at {where} but its process is not visible to "
                "the proxy or belongs to another user (another container, another account): it "
                "is not adopted - configure the model with `url` only (no `command`) to attach it",
            )
        return Claim("adopt", "a vLLM serving the model, not started by this proxy", listener)
    what = ", ".join(map(repr, served)) or ("no vLLM model" if healthy else "no /health")
    pid = f" (pid {listener.pid})" if listener is not None else ""
    return Claim(
        "refuse",
        f"the port of {where} is taken by another process{pid} (it serves {what}); free the "
        "port or change the model's url",
    )


def find_listener(url: str) -> Listener | None:
    """The process that listens on the URL's TCP port (any local address), if this user can see
    it; None if nothing listens or it belongs to someone the proxy cannot inspect."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            try:
                p = psutil.Process(c.pid)
                return Listener(c.pid, os.getpgid(c.pid), p.create_time(), p.uids().real)
            except (psutil.Error, OSError):
                return None
    return None


def group_alive(group: int, since: float) -> bool:
    """Does a live process of `group` run that is no older than `since` (a reused group id
    of a process older than the record is not ours) and is this user's?"""
    me = os.getuid()
    for p in psutil.process_iter(["status", "create_time", "uids"]):
        try:
            if (
                os.getpgid(p.pid) == group
                and p.info["status"] != psutil.STATUS_ZOMBIE
                and p.info["create_time"] >= since - 1.0
                and p.info["uids"].real == me
            ):
                return True
        except (OSError, psutil.Error):
            continue
    return False


async def end_group(group: int, since: float, grace_s: float) -> bool:
    """SIGTERM a previous proxy's group, SIGKILL it after `grace_s`, until none of it runs -
    or KILL_WAIT_S after the SIGKILL (a process stuck in the driver): False then."""
    loop = asyncio.get_running_loop()
    term_until = loop.time() + grace_s
    sig = signal.SIGTERM
    while group_alive(group, since):
        if loop.time() > term_until + KILL_WAIT_S:
            log.error("process group %d still runs %.0fs after SIGKILL", group, KILL_WAIT_S)
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)
        if loop.time() > term_until:
            sig = signal.SIGKILL
        await asyncio.sleep(POLL_S)
    return True


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
        try:
            me = psutil.Process(self._pid)
            found = [me, *me.children(recursive=True)]
        except psutil.Error:
            found = []
        self.seen.update(p.pid for p in found)
        return found

    def _signal(self, sig: int) -> None:
        members = self._members()
        if self._group is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._group, sig)
        for p in members:  # what left the group (or a stranger's whole tree, never its group)
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)

    def kill(self) -> None:
        self.stopping = True
        self._signal(signal.SIGKILL)

    async def stop(self, grace_s: float) -> int | None:
        self.stopping = True
        if not self.running:
            return self._code
        self._signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                return await self.wait()
        except TimeoutError:
            self.kill()
            return await self.wait()
