"""`vllm-switch` with an in-process memory probe, for the soak (bench code only, opt-in).

    RSS_PROBE_DIR=/tmp/p [RSS_PROBE_TRACEMALLOC=1] python3 bench/rss_probe.py serve --config c.yaml

Runs the proxy's own `main` in this process. Each SIGUSR2 writes `RSS_PROBE_DIR/probe-N.json`:
glibc's `mallinfo2()` (bytes handed out vs kept free in its arenas, mmapped blocks), pymalloc's
counters from `sys._debugmallocstats()` (arenas, bytes in used vs free blocks), Python's
allocated block count, gc-tracked objects by type (the growth since the first probe) and, with
`RSS_PROBE_TRACEMALLOC=1`, tracemalloc's top growth by line since the first probe. SIGUSR1 calls
`malloc_trim(0)` and writes the RSS before and after to `trim-N.json`. `RSS_PROBE_LOOP=asyncio`
hides uvloop, so a proxy that asks uvicorn for loop="auto" (before 2026-12-01) runs on asyncio;
`RSS_PROBE_RECV_MAX=N` makes asyncio's socket transports recv() N bytes at most (default 256 KiB).

State: the first probe's snapshot and type counts (module globals of this script, never the
proxy's), set by the first SIGUSR2.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import signal
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, os.environ.get("RSS_PROBE_ROOT") or str(Path(__file__).resolve().parents[1]))

from proxy.cli import main

LIBC = ctypes.CDLL("libc.so.6")


MALLINFO2 = (  # glibc's struct mallinfo2, in order: all size_t
    "arena",  # bytes the main arena got from the kernel (brk)
    "ordblks",
    "smblks",
    "hblks",
    "hblkhd",  # bytes in blocks malloc mmapped on their own
    "usmblks",
    "fsmblks",
    "uordblks",  # bytes handed out
    "fordblks",  # bytes free inside the arenas
    "keepcost",  # of those, the free top that malloc_trim could give back from the end
)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in MALLINFO2]


LIBC.mallinfo2.restype = _Mallinfo2
_first: dict[str, Any] = {}
_count = [0]


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _pymalloc() -> dict[str, int]:
    """A few of sys._debugmallocstats()'s totals (it writes to fd 2: captured through a file)."""
    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read().decode(errors="replace")
    out = {}
    for line in text.splitlines():
        key, _, value = line.rpartition("=")
        key = key.strip().lstrip("# ").strip()
        if key in (
            "arenas allocated current",
            "bytes in allocated blocks",
            "bytes in available blocks",
            "bytes lost to pool headers",
            "bytes lost to quantization",
            "bytes lost to arena alignment",
        ):
            out[key.replace(" ", "_")] = int(value.strip().replace(",", ""))
    return out


def _probe(_sig: int, _frame: FrameType | None) -> None:
    t0 = time.monotonic()
    gc.collect()
    mi = LIBC.mallinfo2()
    types = Counter(type(o).__name__ for o in gc.get_objects())
    report: dict[str, Any] = {
        "rss_kib": _rss_kib(),
        "mallinfo2": {name: getattr(mi, name) for name in MALLINFO2},
        "pymalloc": _pymalloc(),
        "allocated_blocks": sys.getallocatedblocks(),
        "gc_objects": sum(types.values()),
    }
    if not _first:
        _first["types"] = types
        if tracemalloc.is_tracing():
            _first["snap"] = tracemalloc.take_snapshot()
    else:
        grown = types - _first["types"]
        report["types_grown"] = dict(grown.most_common(15))
        if "snap" in _first:
            stats = tracemalloc.take_snapshot().compare_to(_first["snap"], "lineno")
            report["tracemalloc_top"] = [str(s) for s in stats[:15]]
            report["tracemalloc_total_diff_kib"] = round(sum(s.size_diff for s in stats) / 1024, 1)
    if tracemalloc.is_tracing():
        report["tracemalloc_traced_kib"] = tracemalloc.get_traced_memory()[0] // 1024
    report["probe_s"] = round(time.monotonic() - t0, 2)
    out = Path(os.environ["RSS_PROBE_DIR"]) / f"probe-{_count[0]}.json"
    _count[0] += 1
    out.write_text(json.dumps(report, indent=1) + "\n")


def _trim(_sig: int, _frame: FrameType | None) -> None:
    before = _rss_kib()
    LIBC.malloc_trim(0)
    out = Path(os.environ["RSS_PROBE_DIR"]) / f"trim-{_count[0]}.json"
    out.write_text(json.dumps({"rss_before_kib": before, "rss_after_kib": _rss_kib()}) + "\n")


if __name__ == "__main__":
    if os.environ.get("RSS_PROBE_LOOP") == "asyncio":  # uvicorn's loop="auto" falls back to asyncio
        sys.modules["uvloop"] = None  # type: ignore[assignment]
    if recv := os.environ.get("RSS_PROBE_RECV_MAX"):  # asyncio's recv() size (256 KiB)
        import asyncio.selector_events

        asyncio.selector_events._SelectorTransport.max_size = int(recv)  # type: ignore[attr-defined]
    if os.environ.get("RSS_PROBE_TRACEMALLOC") == "1":
        tracemalloc.start(1)
    signal.signal(signal.SIGUSR2, _probe)
    signal.signal(signal.SIGUSR1, _trim)
    raise SystemExit(main())
