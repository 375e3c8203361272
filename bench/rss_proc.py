"""What /proc says about one process's memory, for the soak's samples (Linux only).

`memory(pid)` reads /proc/PID/smaps_rollup, /proc/PID/smaps and /proc/PID/task once and returns
flat numbers in KiB: RSS split into anonymous and file-backed, the anonymous part split into the
`[heap]` (glibc's main arena, grown by brk), glibc per-thread arenas (64 MiB-aligned anonymous
reservations: a read-write part plus its PROT_NONE rest, 64 MiB in all) and other anonymous
mappings (pymalloc's 1 MiB arenas, large mallocs, thread stacks), plus the thread count: each
thread that mallocs may get an arena of its own, up to 8 per core.

State: none; every call reads /proc afresh.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

ARENA_HEAP = 64 * 1024 * 1024  # glibc's HEAP_MAX_SIZE on 64-bit: one per-thread arena heap


def _rollup(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        fields = rest.split()
        if len(fields) == 2 and fields[1] == "kB":
            out[key] = int(fields[0])
    return out


def _mappings(pid: int) -> list[dict[str, object]]:
    """Each mapping of /proc/PID/smaps: start, end, perms, path, Rss and Anonymous (KiB)."""
    maps: list[dict[str, object]] = []
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            start, end = (int(x, 16) for x in head[0].split("-"))
            path = head[5] if len(head) == 6 else ""
            maps.append({"start": start, "end": end, "perms": head[1], "path": path})
        elif line.startswith(("Rss:", "Anonymous:")):
            maps[-1][line.split(":")[0]] = int(line.split()[1])
    return maps


def memory(pid: int) -> dict[str, Any]:
    """One sample of the process's memory (KiB) and thread count."""
    rollup = _rollup(pid)
    maps = _mappings(pid)
    heap = sum(int(str(m.get("Rss", 0))) for m in maps if m["path"] == "[heap]")
    arenas = arena_rss = 0
    anon = [m for m in maps if m["path"] == ""]
    in_arena: set[int] = set()
    for i, m in enumerate(anon):  # an arena heap: 64 MiB-aligned, contiguous pieces, 64 MiB total
        start = int(str(m["start"]))
        if start % ARENA_HEAP:
            continue
        end, j = int(str(m["end"])), i
        while end - start < ARENA_HEAP and j + 1 < len(anon) and anon[j + 1]["start"] == end:
            j += 1
            end = int(str(anon[j]["end"]))
        if end - start == ARENA_HEAP:
            arenas += 1
            in_arena.update(range(i, j + 1))
            arena_rss += sum(int(str(anon[k].get("Rss", 0))) for k in range(i, j + 1))
    other_anon = sum(int(str(m.get("Rss", 0))) for k, m in enumerate(anon) if k not in in_arena)
    return {
        "rss_kib": rollup.get("Rss", 0),
        "anon_kib": rollup.get("Anonymous", 0),
        "file_kib": rollup.get("Rss", 0) - rollup.get("Anonymous", 0),
        "heap_kib": heap,
        "thread_arenas": arenas,
        "thread_arena_kib": arena_rss,
        "other_anon_kib": other_anon,
        "anon_mappings": len(anon),
        "threads": len(os.listdir(f"/proc/{pid}/task")),
        "thread_names": thread_names(pid),
    }


def thread_names(pid: int) -> dict[str, int]:
    """The process's threads by name (/proc/PID/task/*/comm): asyncio_0, libuv-worker, ..."""
    names: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            names[(task / "comm").read_text().strip()] += 1
    return dict(names)
