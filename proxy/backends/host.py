"""The host's processes as psutil reports them (never /proc parsed by hand): who listens on a
backend's port, which processes a process group has, ending a previous proxy's group.

Every answer is for the proxy's own user only: a process another account runs is never
adopted (the proxy would forward its clients' traffic to it) nor signalled. Stateless.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
from urllib.parse import urlsplit

import psutil

from proxy.backends.adoption import Listener

log = logging.getLogger(__name__)
POLL_S = 0.25
KILL_WAIT_S = 10.0  # after a SIGKILL: longer, and a process is stuck in the driver
WILDCARDS = {"0.0.0.0", "::"}
NOBODY = -1  # the uid of a listener that cannot be told apart from a stranger


def _addresses(host: str, port: int) -> set[str]:
    """The addresses a URL's host names (a literal, or what the resolver says)."""
    with contextlib.suppress(ValueError):
        return {str(ipaddress.ip_address(host))}
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return set()
    return {str(info[4][0]) for info in infos}


def find_listener(url: str) -> Listener | None:
    """The process listening where the URL points (its address or a wildcard, its port), if
    this user can see it; None if nothing listens there visibly. Several listeners - another
    user's among them, or one whose owner cannot be seen (a squatter on the same port, other
    address family) - come back with the uid NOBODY: never adopted."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    wanted = _addresses(parts.hostname or "", port) | WILDCARDS
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    here = [
        c
        for c in conns
        if c.status == psutil.CONN_LISTEN
        and c.laddr
        and c.laddr.port == port
        and str(ipaddress.ip_address(c.laddr.ip.split("%")[0])) in wanted
    ]
    pids = sorted({c.pid for c in here if c.pid})
    if not pids:
        return None
    try:
        procs = [psutil.Process(pid) for pid in pids]
        uids = {p.uids().real for p in procs}
        first = procs[0]
        uid = uids.pop() if len(uids) == 1 and all(c.pid for c in here) else NOBODY
        return Listener(first.pid, os.getpgid(first.pid), first.create_time(), uid)
    except (psutil.Error, OSError):
        return None


def group_members(group: int, since: float) -> set[int]:
    """This user's live processes of `group`, none older than `since`. Empty when the group's
    id was reused: its leader (pid == group) runs but started at another time than `since`."""
    me = os.getuid()
    with contextlib.suppress(psutil.Error):
        leader = psutil.Process(group)
        if leader.status() != psutil.STATUS_ZOMBIE and abs(leader.create_time() - since) > 1.0:
            return set()  # a group id can only be reused once all of the old group is gone
    found: set[int] = set()
    for p in psutil.process_iter(["status", "create_time", "uids"]):
        try:
            if (
                os.getpgid(p.pid) == group
                and p.info["status"] != psutil.STATUS_ZOMBIE
                and p.info["create_time"] >= since - 1.0
                and p.info["uids"].real == me
            ):
                found.add(p.pid)
        except (OSError, psutil.Error):
            continue
    return found


def owner_alive(pid: int, before: float) -> bool:
    """Is process `pid` - one started no later than `before` - still running (the proxy that
    wrote a record, still serving)?"""
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and p.create_time() <= before + 1.0
    except psutil.Error:
        return False


async def end_group(group: int, since: float, grace_s: float) -> bool:
    """SIGTERM a previous proxy's group once, SIGKILL what is left after `grace_s`, until none
    of it runs - or KILL_WAIT_S after the SIGKILL (stuck in the driver): False then."""
    loop = asyncio.get_running_loop()
    term_until = loop.time() + grace_s
    sent: int | None = None
    while group_members(group, since):
        now = loop.time()
        if now > term_until + KILL_WAIT_S:
            log.error("process group %d still runs %.0fs after SIGKILL", group, KILL_WAIT_S)
            return False
        sig = signal.SIGKILL if now > term_until else signal.SIGTERM
        if sig != sent or sig == signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, sig)
            sent = sig
        await asyncio.sleep(POLL_S)
    return True
