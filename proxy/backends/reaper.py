"""The reaper: a small parent between the proxy and a supervised vLLM, so that the vLLM dies
with the proxy however the proxy dies (SIGKILL, the OOM killer, a crashed container init).

    python -m proxy.backends.reaper --parent PID --grace S -- vllm serve ...

It is the leader of the backend's process group (the proxy starts it in a session of its
own). It asks Linux for a SIGTERM when its parent dies (PR_SET_PDEATHSIG; if the parent is
already gone by then, it stops at once), becomes the subreaper of what it starts
(PR_SET_CHILD_SUBREAPER: vLLM's engine and worker processes that lose their parent are
re-parented to it, not to init), and runs the command in its own group. On SIGTERM or SIGINT -
the proxy stopping it, or the proxy's death - it sends SIGTERM to the whole group, waits up to
`--grace` seconds, then SIGKILL. On SIGUSR1 - the proxy killing a wedged engine - it SIGKILLs
at once. Either way it kills the others, never itself, reaps them and exits with the command's
exit status (128 + signal for a signal): no zombie is left to init (a container's PID 1 may
be the proxy, which reaps nothing it did not start). Only stdlib: it runs in the backend's
environment, before anything of the proxy.

State: its child's PID and whether a stop began, for its own lifetime; nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
KILL_WAIT_S = 10.0


def _prctl(option: int, value: int) -> bool:
    """prctl(2) on Linux; False where it does not exist (the reaper then only relays signals)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


class Reaper:
    def __init__(self, argv: Sequence[str], grace_s: float) -> None:
        self.argv = list(argv)
        self.grace_s = grace_s
        self.stopping = False
        self._pid: int | None = None  # the command's
        self.code: int | None = None  # its exit code (negative: the signal), once reaped

    def stop(self, _signum: int = signal.SIGTERM, _frame: object = None) -> None:
        """SIGTERM to the group (vLLM and everything it started), SIGKILL after the grace to
        whatever is left of it but the reaper; then reap them all."""
        if self.stopping:
            return
        self.stopping = True
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's SIGTERM reaches us too
        if self._pid is None:
            return  # no command yet: run() ends it as soon as it exists
        self._terminate()

    def _terminate(self) -> None:
        group = os.getpgrp()
        _signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline and _others(group):
            self._reap()
            time.sleep(0.05)
        self.kill_now()

    def kill_now(self, _signum: int = signal.SIGUSR1, _frame: object = None) -> None:
        """SIGKILL every other process of the group, and reap them (and the orphans it is the
        subreaper of) until none runs - or KILL_WAIT_S passed (one stuck in the driver, in
        uninterruptible sleep: the proxy's release wait sees it)."""
        self.stopping = True
        group = os.getpgrp()
        deadline = time.monotonic() + KILL_WAIT_S
        while (pids := _others(group)) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._reap()
            time.sleep(0.01)
        self._reap()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGUSR1, self.kill_now)
        # our group; stdout and stderr: ours (the proxy's). Never Popen.wait(): a handler's
        # reaping would leave it ECHILD, which it reports as exit 0
        self._pid = subprocess.Popen(self.argv).pid
        if self.stopping:  # a stop (or the proxy's death) came before the command existed
            self._terminate()
        while self.code is None:
            try:
                pid, status = os.waitpid(self._pid, 0)
            except ChildProcessError:  # a handler reaped it (and noted its status)
                break
            if pid == self._pid:
                self.code = os.waitstatus_to_exitcode(status)
        if not self.stopping:
            self.stop()  # the command ended by itself: nothing it started may stay behind
        code = 1 if self.code is None else self.code
        return code if code >= 0 else 128 - code

    def _reap(self) -> None:
        """Reap every child that exited (the command - its status kept - and orphans
        re-parented to us as their subreaper)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self._pid and self.code is None:
                self.code = os.waitstatus_to_exitcode(status)


def _others(group: int) -> list[int]:
    """Live processes of `group` besides us (Linux: /proc; elsewhere: assume none)."""
    me = os.getpid()
    found: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == group and state not in ("Z", "X"):
            found.append(int(entry))
    return found


def _signal_group(group: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, sig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m proxy.backends.reaper")
    p.add_argument("--parent", type=int, required=True, help="the proxy's PID")
    p.add_argument("--grace", type=float, default=30.0, help="SIGTERM -> SIGKILL, seconds")
    p.add_argument("command", nargs=argparse.REMAINDER)
    ns = p.parse_args(argv)
    command = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    if not command:
        p.error("no command after --")
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != ns.parent:  # the proxy died before the death signal was armed
        return 128 + signal.SIGTERM
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    return Reaper(command, ns.grace).run()


if __name__ == "__main__":
    sys.exit(main())
