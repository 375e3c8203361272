"""The GPU memory release wait: after a supervised backend's process died or was killed,
nothing is started or woken on its GPU until the memory it held is given back.

vLLM sizes its KV cache from the free memory it profiles at start, and refuses to start when
too little is free: started next to memory a dead process still holds (the driver frees it as
the process's last descendant exits, and a worker that left the process group can outlive its
parent), it starts wrong or not at all. So:

  1. every pid known to have belonged to the backend is gone (not a zombie) - with none known
     (never seen to run) there is nothing to wait for - and
  2. with NVML (the `nvml` extra and `gpus[].nvml_device`): free memory has stopped rising -
     two reads `settle_s` apart differ by less than SETTLED_GIB; without NVML: `settle_s` more.

Both bounded by `limit_s`: past it a warning is logged and the caller goes on (vLLM's own
start-up check is the last word), told that the memory may not be released. Stateless.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import psutil

from proxy.backends.gpu_memory import GpuMemory
from proxy.clock import Clock

log = logging.getLogger(__name__)
POLL_S = 0.1
SETTLED_GIB = 0.25


def _alive(pids: Iterable[int]) -> list[int]:
    left = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
        except psutil.Error:
            continue
    return left


async def wait_released(
    name: str,
    pids: Iterable[int],
    memory: GpuMemory | None,
    clock: Clock,
    *,
    settle_s: float,
    limit_s: float,
) -> tuple[float, bool]:
    """Wait until `name`'s processes are gone and the GPU's free memory settled: seconds taken,
    and whether that happened (False: the wait gave up at `limit_s`)."""
    began = clock.monotonic()
    deadline = began + limit_s
    known = set(pids)
    if not known:  # nothing was seen to run (a test's fake process): nothing to wait for
        return 0.0, True
    while (left := _alive(known)) and clock.monotonic() < deadline:  # noqa: ASYNC110 - not our children
        await asyncio.sleep(POLL_S)
    if left:
        log.warning("%s: pids %s still run %.0fs after its stop", name, left, limit_s)
        return clock.monotonic() - began, False
    before = memory.free_gib() if memory is not None else None
    while settle_s > 0 and clock.monotonic() < deadline:
        await asyncio.sleep(settle_s)
        if memory is None:
            break
        now = memory.free_gib()
        if before is None or now is None:  # NVML cannot say: the plain grace is all we have
            break
        if now - before < SETTLED_GIB:
            break
        log.info("%s: GPU memory still being released (%.1f -> %.1f GiB free)", name, before, now)
        before = now
    else:
        if settle_s > 0:
            log.warning("%s: GPU memory still being released after %.0fs", name, limit_s)
            return clock.monotonic() - began, False
    return clock.monotonic() - began, True
