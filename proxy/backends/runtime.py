"""The runtime directory: a record of each backend process the proxy started, so that the next
proxy - after this one died however it died - can tell one of its own processes at a backend's
URL from a stranger, and whether it was started from the same command.

One JSON file per backend port (`port-<port>.json`: the port is what two processes cannot
share, whatever the URL calls the host), written atomically (a temporary file, then rename):
`url`, `name`, `group` (the process group the backend runs in - the reaper's pid), `started`
(the reaper's start time, seconds since the epoch: a reused group id does not match, see
host.group_members), `fingerprint` (of command, env and working directory), `proxy_pid`, and
`boot`/`pidns` (a record from before a reboot or from another container's life is stale). A record is evidence, never trusted alone: adoption also checks that the
process listening at the URL is in that group and no older than the record (adoption.py).

State: the files on disk only; RuntimeDir keeps nothing in memory. The Supervisor writes a
record when it launches a process and removes it when that process is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from proxy.config import ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    url: str
    name: str
    group: int
    started: float
    fingerprint: str
    proxy_pid: int
    boot: float = 0.0  # the host's boot time: a record from before a reboot is stale
    pidns: int = 0  # the pid namespace: a record from another container's life is stale


def this_host() -> tuple[float, int]:
    """(boot time, pid namespace id) of the running system, for a record's `boot`/`pidns`."""
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ns = 0
    return psutil.boot_time(), ns


def fingerprint(config: ModelConfig) -> str:
    """What makes two starts the same process: argv, the extra environment, the directory."""
    text = json.dumps(
        {"command": config.command, "env": config.env, "cwd": str(config.cwd or "")},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_runtime_dir() -> Path:
    """$XDG_RUNTIME_DIR/vllm-switch, else a per-user directory in the temporary directory."""
    if base := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(base) / "vllm-switch"
    return Path(tempfile.gettempdir()) / f"vllm-switch-{os.getuid()}"


class RuntimeDir:
    """Records are trusted only in a directory - and from files - this user owns that nobody
    else may write: a record names process groups the proxy may end, so one planted by another
    local user (the default lies in a shared temporary directory) must never be read."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _trusted(self, path: Path) -> bool:
        try:
            st = path.stat()
        except OSError:
            return False
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            log.warning(
                "runtime dir: ignoring %s: owned by uid %d or writable by others (mode %o)",
                path,
                st.st_uid,
                st.st_mode & 0o777,
            )
            return False
        return True

    def _file(self, url: str) -> Path:
        return self.path / f"port-{_port(url)}.json"  # the port is what cannot be shared

    def write(self, record: Record) -> None:
        """Best effort: a proxy that cannot write its records still runs (it only cannot
        recognise its processes after a crash), and says so."""
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self._trusted(self.path):
                return
            target = self._file(record.url)
            fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".rec-")
            with os.fdopen(fd, "w") as f:
                json.dump(asdict(record), f)
            os.replace(tmp, target)
        except OSError as exc:
            log.warning("runtime dir %s: cannot record %s: %s", self.path, record.name, exc)

    def read(self, url: str) -> Record | None:
        """The record for `url`, or None (none, unreadable, or not a record: never an error)."""
        file = self._file(url)
        if not file.exists() or not (self._trusted(self.path) and self._trusted(file)):
            return None
        try:
            data: Any = json.loads(file.read_text())
            record = Record(
                url=str(data["url"]),
                name=str(data["name"]),
                group=int(data["group"]),
                started=float(data["started"]),
                fingerprint=str(data["fingerprint"]),
                proxy_pid=int(data["proxy_pid"]),
                boot=float(data.get("boot", 0.0)),
                pidns=int(data.get("pidns", 0)),
            )
        except (
            OSError,
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            ArithmeticError,
            RecursionError,
        ):
            return None
        boot, pidns = this_host()
        if abs(record.boot - boot) > 2.0 or record.pidns != pidns:
            return None  # from before a reboot, or another container's life: its pids mean nothing
        return record if _port(record.url) == _port(url) and record.group > 1 else None

    def forget(self, url: str) -> None:
        with contextlib.suppress(OSError):
            self._file(url).unlink()


def _port(url: str) -> int | None:
    try:
        parts = urlsplit(url)
        return parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
