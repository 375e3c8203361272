"""Start-up of every GPU group: adopt running backends, start supervised ones one at a time.

Per group, under its lock (so no request switches meanwhile; requests wait for `reconciled`):

  0. supervised backends: what already listens at each one's URL is looked at first
     (Supervisor.adopt): one adopted - a previous proxy's backend from the same command, or a
     vLLM serving the model started by hand - is reconciled from here on like an attached
     backend (its sleep state read, a level-2 one reset); a previous proxy's backend that is
     unhealthy or from another command is ended and started anew; a stranger on the port
     leaves the model FAILED with a message naming the port;
  1. attached backends (a `url` only): wait for /health (never touch memory while one starts),
     then probe each (backends/probe.py: read-only GETs - /is_sleeping, whether sleep mode is
     on, whether its /v1/models lists the model's served name, its max_model_len). One set up
     wrongly (no dev mode, no sleep mode while the proxy may put it to sleep, another model)
     is FAILED with the finding and its
     fix, holding memory unless it sleeps with sleep mode on: it can never be slept for real;
  2. supervised backends (a `command`) with `start: eager` - unless a member failed and may
     still hold memory (then they stay STOPPED, and the group answers "blocked"): first put every awake attached
     backend to sleep, then start them one after another - start, /health, warm-up, sleep -
     so that no vLLM ever profiles memory while another on the GPU is awake (it would size its
     KV cache wrongly or refuse to start). The last one stays awake. `start: lazy` ones stay
     STOPPED until their first request. Each started one is probed too (served name, sleep
     mode, max_model_len; dev mode is the proxy's own); a finding is logged as an error but
     does not fail it: a FAILED supervised backend whose process still runs would be started
     a second time by the next request;
  3. at most `max_awake` stay awake; extras are put to sleep while still UNKNOWN (no leases);
     a level-2 backend that says it sleeps is woken in full and slept again (its weights may be
     mapped: a proxy killed mid-wake), with every other member asleep first.

Decisions are made before anything is READY, so no lease and no early waiter exists on a
backend this start-up puts to sleep. Stateless, but it writes backend state under each group's
lock: STOPPED for lazy members, ASLEEP/READY from /is_sleeping, FAILED for a member that never
answers or fails its probe, `max_model_len` from the probe; it sets the group's `reconciled`
event when done, whatever happened.
"""

from __future__ import annotations

import asyncio
import logging

import httpx

from proxy.backends import Backend, BackendState
from proxy.backends.probe import ProbeReport, may_sleep, probe_backend
from proxy.clock import Clock
from proxy.switching.group import GpuGroup
from proxy.switching.switcher import Switcher

log = logging.getLogger(__name__)
HEALTH_POLL_S = 0.25


async def start_up(switcher: Switcher) -> None:
    async with asyncio.TaskGroup() as tg:
        for group in switcher.groups():
            tg.create_task(_group_start_up(switcher, group), name=f"start-up:{group.name}")


async def _group_start_up(switcher: Switcher, group: GpuGroup) -> None:
    try:
        async with group.lock:
            await _reconcile(switcher, group)
    finally:
        group.reconciled.set()  # whatever happened, waiters proceed (to READY or to a 503)


async def _reconcile(switcher: Switcher, group: GpuGroup) -> None:
    supervised = [b for b in group.members if b.config.supervised]
    adopted = [b for b in supervised if (await switcher.steps.adopt(b)).action == "adopt"]
    attached = [b for b in group.members if not b.config.supervised or b in adopted]
    fresh = [b for b in supervised if b not in adopted and b.state is not BackendState.FAILED]
    eager = [b for b in fresh if b.config.start == "eager"]
    for b in fresh:
        if b.config.start == "lazy":
            b.set_state(BackendState.STOPPED)
    await asyncio.gather(*(_wait_up(b, switcher.clock) for b in attached))
    asleep: dict[str, bool] = {}
    for b in attached:
        if b.state is BackendState.UNKNOWN and (state := await _probe(b, group)) is not None:
            asleep[b.name] = state
    awake = [b for b in attached if asleep.get(b.name) is False]
    # a level-2 backend that says it sleeps may hold its weights anyway: a proxy killed between
    # `wake_up?tags=weights` and `tags=kv_cache` leaves exactly that, and the next wake next to
    # it would run out of memory. Such backends are put back to a known state first - woken in
    # full (reload included) and slept at level 2 again - with nothing else awake on the GPU.
    unsure = [b for b in attached if asleep.get(b.name) is True and b.config.sleep_level == 2]
    keep = [] if eager or unsure else awake[: group.max_awake]
    for extra in (b for b in awake if b not in keep):
        log.info(
            "start-up: putting %s to sleep (%s)",
            extra.name,
            "to start others"
            if eager
            else "to reset level-2 backends"
            if unsure
            else f"max_awake={group.max_awake}",
        )
        await switcher.sleep_now(extra)
    for b in unsure:
        log.info("start-up: resetting %s (level 2: its weights may still be mapped)", b.name)
        await switcher.reset_now(b)
    for b in attached:
        if b.state is BackendState.UNKNOWN:
            b.set_state(BackendState.ASLEEP if asleep[b.name] else BackendState.READY)
    await _bootstrap(switcher, group, eager)
    for b in group.members:
        log.info("start-up: %s is %s", b.name, b.state)


async def _bootstrap(switcher: Switcher, group: GpuGroup, eager: list[Backend]) -> None:
    clock = switcher.clock
    began = clock.monotonic()
    blocking = [m.name for m in group.members if m.state is BackendState.FAILED and m.holds_memory]
    if eager and blocking:
        # vLLM profiles free memory while it starts: next to a member that may still hold some
        # (it never came up, or failed a probe) it would size its KV cache wrongly or not start.
        # The eager ones stay STOPPED; a request for one answers the group's "blocked" 503.
        log.error(
            "bootstrap %s: not starting %s: %s failed and may still hold GPU memory",
            group.name,
            ", ".join(b.name for b in eager),
            ", ".join(blocking),
        )
        for b in eager:
            b.set_state(BackendState.STOPPED)
        return
    for i, b in enumerate(eager, start=1):
        eta = ""
        if i > 1:
            per = (clock.monotonic() - began) / (i - 1)
            eta = f", about {per * (len(eager) - i + 1):.0f}s left"
        log.info("bootstrap %s: starting %s (%d/%d%s)", group.name, b.name, i, len(eager), eta)
        if not await switcher.start_now(b, group):
            continue
        report = await probe_backend(
            b.config, _client(b), dev_mode_known=True, needs_sleep=_needs_sleep(b, group)
        )
        b.max_model_len = report.max_model_len
        if not report.ok:
            log.error(
                "bootstrap %s: %s is set up wrongly: %s", group.name, b.name, report.message()
            )
        if i < len(eager):  # the next one needs the memory
            await switcher.sleep_now(b)
    if eager:
        log.info("bootstrap %s: done in %.0fs", group.name, clock.monotonic() - began)


async def _wait_up(backend: Backend, clock: Clock) -> None:
    """Poll /health until the backend is up. One that never comes up is FAILED and *may hold
    memory*: vLLM allocates GPU memory before it listens, so it blocks its group."""
    t = backend.config.timeouts
    deadline = clock.monotonic() + t.start_s
    while True:
        try:
            async with asyncio.timeout(t.control_s):
                if await backend.control.health():
                    return
        except TimeoutError:
            pass
        if clock.monotonic() > deadline:
            backend.mark_failed(
                f"not reachable within {t.start_s:g}s of start-up", holds_memory=True
            )
            return
        await asyncio.sleep(HEALTH_POLL_S)


async def _probe(backend: Backend, group: GpuGroup) -> bool | None:
    """The start-up probe of an attached backend: whether it sleeps, or None (and FAILED) if it
    cannot say or is set up so that the proxy could never really put it to sleep."""
    needs_sleep = _needs_sleep(backend, group)
    report = await probe_backend(backend.config, _client(backend), needs_sleep=needs_sleep)
    backend.max_model_len = report.max_model_len
    if report.ok:
        return report.is_sleeping
    # memory is known free only when it says it sleeps and sleep mode is on (else /sleep freed
    # nothing); otherwise it blocks its group, as a backend that never came up does
    free = report.is_sleeping is True and report.sleep_mode is True
    backend.mark_failed(_failure(report), holds_memory=not free)
    return None


def _needs_sleep(backend: Backend, group: GpuGroup) -> bool:
    return may_sleep(backend.config, len(group.members), group.max_awake)


def _failure(report: ProbeReport) -> str:
    first = report.findings[0]
    if first.check == "is_sleeping":
        return f"/is_sleeping failed at start-up: {report.message()}"
    return f"start-up probe: {report.message()}"


def _client(backend: Backend) -> httpx.AsyncClient:
    """The client the backend's control calls use (its transport: the tests' fake vLLM too)."""
    return backend.control.client
