"""A fake GPU's memory, shared by every emulator process that names the same GPU.

State lives in one JSON file per fake GPU (`<dir>/<gpu>.json`), changed only under an exclusive
`flock` on `<dir>/<gpu>.lock`, so separate processes see one consistent ledger. Each process owns
exactly its own entry (keyed by PID and the process's start time, so a reused PID is not
mistaken for its predecessor). An entry whose process has exited no longer counts: memory is
"freed" when the process dies, however it dies - as with a real CUDA context.

The ledger also counts failed wakes (`oom_events`) and keeps the peak usage, so tests can assert
that a proxy never over-committed the GPU.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _start_time(pid: int) -> str | None:
    """Kernel start time of `pid` (field 22 of /proc/PID/stat), or None if it is gone - or a
    zombie: a process that exited holds no GPU memory, reaped or not (an orphan whose parent
    died with it may stay a zombie for good where PID 1 does not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


@dataclass(frozen=True)
class LedgerSnapshot:
    gpu: str
    total_bytes: int
    used_bytes: int
    holders: dict[str, dict[str, Any]]
    oom_events: int
    peak_used_bytes: int

    @property
    def free_bytes(self) -> int:
        return self.total_bytes - self.used_bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu,
            "total_bytes": self.total_bytes,
            "used_bytes": self.used_bytes,
            "free_bytes": self.free_bytes,
            "holders": self.holders,
            "oom_events": self.oom_events,
            "peak_used_bytes": self.peak_used_bytes,
        }


class LedgerDirError(Exception):
    """The ledger directory is not this user's own (someone else could forge the fake GPU)."""


def own_directory(path: Path) -> None:
    """Refuse a ledger directory that another user owns or may write to."""
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise LedgerDirError(
            f"ledger directory {path} must belong to this user and not be group- or "
            f"world-writable (mode {st.st_mode & 0o777:o}); pass --emu-ledger-dir"
        )


class GpuLedger:
    """This process's handle on one fake GPU's ledger file."""

    def __init__(self, directory: Path, gpu: str, total_bytes: int, *, label: str) -> None:
        self._dir = directory
        self._gpu = gpu
        self._total = total_bytes
        self._label = label
        self._pid = os.getpid()
        self._me = str(self._pid)
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        own_directory(self._dir)

    @property
    def path(self) -> Path:
        return self._dir / f"{self._gpu}.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        with (self._dir / f"{self._gpu}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self._read()
                yield state
                self._write(state)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            state = {
                "total_bytes": self._total,
                "holders": {},
                "oom_events": 0,
                "peak_used_bytes": 0,
            }
        live = {}
        for pid, entry in state["holders"].items():
            if _start_time(int(pid)) == entry.get("start"):
                live[pid] = entry
        state["holders"] = live
        return state

    def _write(self, state: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(f".{self._pid}.tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
        tmp.replace(self.path)

    @staticmethod
    def _used(state: dict[str, Any]) -> int:
        return sum(int(e["bytes"]) for e in state["holders"].values())

    def _others_used(self, state: dict[str, Any]) -> int:
        return sum(int(e["bytes"]) for pid, e in state["holders"].items() if pid != self._me)

    def _set(self, state: dict[str, Any], nbytes: int) -> None:
        state["holders"][self._me] = {
            "bytes": nbytes,
            "start": _start_time(self._pid),
            "label": self._label,
        }
        state["peak_used_bytes"] = max(int(state["peak_used_bytes"]), self._used(state))

    def snapshot(self) -> LedgerSnapshot:
        with self._locked() as state:
            return LedgerSnapshot(
                gpu=self._gpu,
                total_bytes=int(state["total_bytes"]),
                used_bytes=self._used(state),
                holders=dict(state["holders"]),
                oom_events=int(state["oom_events"]),
                peak_used_bytes=int(state["peak_used_bytes"]),
            )

    def others_used(self) -> int:
        with self._locked() as state:
            return self._others_used(state)

    def held(self) -> int:
        with self._locked() as state:
            return int(state["holders"].get(self._me, {}).get("bytes", 0))

    def reserve(self, nbytes: int) -> int | None:
        """Hold `nbytes` in total if it fits beside the others; else None and the free bytes."""
        with self._locked() as state:
            free = int(state["total_bytes"]) - self._others_used(state)
            if nbytes > free:
                return free
            self._set(state, nbytes)
            return None

    def grow(self, delta: int) -> int | None:
        """Add `delta` bytes if they fit; else record an OOM, grab what is free and return it.

        Grabbing the rest mirrors vLLM 0.26.0: a failed wake leaves its partial mappings in
        place and they stay held until the process exits.
        """
        with self._locked() as state:
            mine = int(state["holders"].get(self._me, {}).get("bytes", 0))
            free = int(state["total_bytes"]) - self._used(state)
            if delta <= free:
                self._set(state, mine + delta)
                return None
            state["oom_events"] = int(state["oom_events"]) + 1
            self._set(state, mine + max(free, 0))
            return free

    def set_held(self, nbytes: int) -> None:
        with self._locked() as state:
            self._set(state, nbytes)

    def release_all(self) -> None:
        with self._locked() as state:
            state["holders"].pop(self._me, None)
