"""The soak's view of the proxy process from /proc: its open descriptors, its TCP sockets by
peer (listening, to a backend, other). Stateless.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from pathlib import Path


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def sockets_by_peer(pid: int, backend_ports: set[int]) -> dict[str, int]:
    """The process's TCP sockets: listening, to a backend, or other (clients), from /proc/net."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    kinds: Counter[str] = Counter()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[9] not in inodes:
                continue
            remote = int(cols[2].rsplit(":", 1)[1], 16)
            state = (
                "listening"
                if cols[3] == "0A"
                else "to_backend"
                if remote in backend_ports
                else "other"
            )
            kinds[state] += 1
    return dict(kinds)
