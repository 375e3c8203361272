"""Supervisor: backend processes the proxy starts itself (models with a `command`).

Owns one ManagedProcess and one exit watcher per supervised backend, and the crash history that
decides when - and whether - a crashed backend may start again (exponential backoff; more than
`max_restarts` crashes within `window_s` and it stays FAILED until an operator restarts the
proxy). Processes are started and killed only by switching/transitions.py, under their GPU
group's lock, and stopped at shutdown.

It also writes backend state, always from the switching core's steps under the group's lock:
STARTING when it launches a process and holds_memory=False after a kill; and STOPPED at
shutdown, once the switching core is closed. A process that dies by itself is *reported*
(`on_exit`, the Switcher's `report_exit`), never written here; the next request for it
restarts it through a switch. How a process is made (`launcher`) and the clock are injectable.

Across proxy lives (docs/deploy.md, "When the proxy dies"): it records every process it
launches in the runtime directory (runtime.py) and forgets it when the process is gone; at
start-up `adopt` looks at what already listens at each supervised backend's URL (adoption.py):
a previous proxy's backend started from the same command, or a vLLM serving the model started
by hand, becomes an AdoptedProcess kept like a launched one; a previous proxy's backend that is
unhealthy or from another command is ended first. After any process of its ends, nothing more
is started on the GPU until its memory is released (release.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path

import psutil

from proxy.backends import Backend, BackendState
from proxy.backends.adopted import AdoptedProcess
from proxy.backends.adoption import Claim, Listener, decide
from proxy.backends.gpu_memory import GpuMemory
from proxy.backends.host import end_group, find_listener, group_members, owner_alive
from proxy.backends.probe import probe_backend
from proxy.backends.process import ManagedProcess, Process
from proxy.backends.release import wait_released
from proxy.backends.runtime import Record, RuntimeDir, fingerprint, this_host
from proxy.clock import Clock, SystemClock
from proxy.config import ModelConfig

log = logging.getLogger(__name__)
HEALTH_POLL_S = 0.25


class StartError(Exception):
    """A supervised backend did not come up (exited, or no /health within start_s)."""


class Supervisor:
    def __init__(
        self,
        backends: Mapping[str, Backend],
        on_restart: Callable[[str], None] = lambda _name: None,
        *,
        clock: Clock | None = None,
        launcher: Callable[[ModelConfig], Process] | None = None,
        runtime: RuntimeDir | None = None,
        find: Callable[[str], Listener | None] = find_listener,
    ) -> None:
        self._backends = backends
        self._on_restart = on_restart  # counts a restart (the metrics' restarts counter)
        self._clock = clock or SystemClock()
        self._launch = launcher or _managed_process
        self._runtime = runtime  # None: nothing recorded, nothing adopted (tests' fakes)
        self._find = find
        self._procs = {
            b.name: self._launch(b.config) for b in backends.values() if b.config.supervised
        }
        self._crashes: dict[str, deque[float]] = {name: deque() for name in self._procs}
        self._not_before: dict[str, float] = {}
        self._given_up: set[str] = set()  # crash loops: never restarted again
        # told when a process died by itself (not stopped, not killed by us); set by the Switcher
        self.on_exit: Callable[[Backend, int], None] = lambda _backend, _code: None
        self._watchers: set[asyncio.Task[None]] = set()
        # memory release waits of processes that died by themselves, until they end
        self._releasing: dict[str, asyncio.Task[None]] = {}
        self._starts: dict[str, int] = dict.fromkeys(self._procs, 0)
        # the free memory of a backend's GPU (NVML), for the release wait; set by the Switcher
        self.memory_of: Callable[[Backend], GpuMemory | None] = lambda _backend: None

    def supervises(self, name: str) -> bool:
        return name in self._procs

    def process(self, name: str) -> Process | None:
        return self._procs.get(name)

    def restarts(self, name: str) -> int:
        """Starts after the first one (after a crash, or after a kill of a wedged engine)."""
        return max(0, self._starts.get(name, 0) - 1)

    def restart_wait(self, backend: Backend) -> float | None:
        """Seconds until `backend` may be (re)started; None if it may not (unsupervised, or a
        crash loop), 0 if now."""
        if backend.name not in self._procs:
            return None
        cfg = backend.config.restart
        now = self._clock.monotonic()
        if backend.name in self._given_up:
            return None
        recent = [t for t in self._crashes[backend.name] if now - t <= cfg.window_s]
        if len(recent) > cfg.max_restarts:
            return None
        return max(0.0, self._not_before.get(backend.name, 0.0) - now)

    async def start(self, backend: Backend) -> None:
        """Launch the process and wait for /health (bounded by the caller's timeout) - unless
        something already answers at the model's URL: then no second process is started on a
        busy port, and the error names the port and what listens there."""
        proc = self._procs[backend.name]
        if isinstance(proc, AdoptedProcess):  # replaced by one of ours from now on
            if proc.running:  # FAILED (e.g. its probe: no dev mode), so restarted: end it first
                await proc.stop(backend.config.stop_grace_s)
                await self._gone(backend, proc)
            proc = self._procs[backend.name] = self._launch(backend.config)
        if (taken := await self._occupant(backend)) is not None:
            raise StartError(taken)
        await self.settled([backend])  # (the switching core awaited its group's already)
        backend.set_state(BackendState.STARTING)
        self._starts[backend.name] += 1
        if self._starts[backend.name] > 1:
            self._on_restart(backend.name)
        await proc.start()
        self._record(backend, proc)
        self._watch_exit(backend, proc)
        while not await backend.control.health():
            if not proc.running:
                tail = "\n".join(proc.tail()[-5:])
                raise StartError(
                    f"process exited with {proc.returncode} while starting; last output:\n{tail}"
                )
            await asyncio.sleep(HEALTH_POLL_S)
        proc.collect()  # its engine and workers now run: what a release wait must watch

    async def _occupant(self, backend: Backend) -> str | None:
        """What answers at the URL of a backend about to be started, or None (nothing: the
        port is free). Never the proxy's own process: this runs only when it has none. Past
        start-up nothing is adopted: a vLLM serving the model that appeared since is refused."""
        if not await backend.control.health():
            return None
        report = await probe_backend(backend.config, backend.control.client, needs_sleep=False)
        where = backend.config.base_url
        if backend.config.backend_model in report.served:
            return (
                f"a vLLM serving {backend.config.backend_model!r} already listens at {where}, "
                "not started by this proxy: stop it, or restart the proxy to adopt it, or "
                "configure the model with `url` only (no `command`) to attach it"
            )
        listener = self._find(where) if self._runtime is not None else None
        pid = f" (pid {listener.pid})" if listener is not None else ""
        served = ", ".join(map(repr, report.served)) or "no vLLM model"
        return (
            f"the port of {where} is taken by another process{pid} (it serves {served}); free "
            "the port or change the model's url"
        )

    async def adopt(self, backend: Backend) -> Claim:
        """Start-up, before anything starts: what listens at a supervised backend's URL
        (adoption.decide). 'adopt': kept as its process from now on, its state for start-up
        to reconcile; 'replace': a previous proxy's backend, ended and its memory released -
        started anew (unless a stranger then still holds the port); 'refuse': FAILED with the
        reason, holding memory if it is a vLLM serving the model (it is on this GPU)."""
        if self._runtime is None:
            return Claim("start", "no runtime directory")
        cfg = backend.config
        record = self._runtime.read(cfg.base_url)
        members = group_members(record.group, record.started) if record is not None else set()
        if (
            record is not None
            and record.proxy_pid != os.getpid()
            and owner_alive(record.proxy_pid, record.started)
        ):
            return self._refused(
                backend,
                Claim(
                    "refuse",
                    f"another vllm-switch (pid {record.proxy_pid}) supervises "
                    f"{cfg.base_url}: two proxies must not share backends",
                ),
                holds_memory=True,
            )
        healthy = await backend.control.health()
        served: tuple[str, ...] = ()
        if healthy:
            served = (await probe_backend(cfg, backend.control.client, needs_sleep=False)).served
        claim = decide(
            where=cfg.base_url,
            model=cfg.backend_model,
            healthy=healthy,
            served=served,
            listener=self._find(cfg.base_url),
            record=record if members else None,  # its group gone (or the id reused): stale
            record_alive=bool(members),
            fingerprint=fingerprint(cfg),
            adopt=cfg.adopt,
        )
        log.info(
            "start-up: %s at %s: %s (%s)", backend.name, cfg.base_url, claim.action, claim.reason
        )
        if claim.action == "adopt" and claim.listener is not None:
            proc = AdoptedProcess(
                backend.name, claim.listener, owned=claim.owned, reason=claim.reason
            )
            self._procs[backend.name] = proc
            self._starts[backend.name] += 1
            self._watch_exit(backend, proc)
            return claim
        if record is not None:
            self._runtime.forget(cfg.base_url)  # replaced below, or stale
        if claim.action == "replace" and record is not None:
            pids = members | ({claim.listener.pid} if claim.listener is not None else set())
            if not await end_group(record.group, record.started, cfg.stop_grace_s):
                why = f"a previous proxy's backend (process group {record.group}) does not die"
                return self._refused(backend, Claim("refuse", why), holds_memory=True)
            await self._released(backend, pids)
            if (left := self._find(cfg.base_url)) is not None:  # a stranger holds the port too
                why = f"the port of {cfg.base_url} is still taken (pid {left.pid}) after the "
                return self._refused(
                    backend, Claim("refuse", why + "previous proxy's backend ended"), False
                )
        elif claim.action == "refuse":
            self._refused(backend, claim, holds_memory=cfg.backend_model in served)
        return claim

    def _refused(self, backend: Backend, claim: Claim, holds_memory: bool) -> Claim:
        backend.mark_failed(claim.reason, holds_memory=holds_memory)
        return claim

    def _record(self, backend: Backend, proc: Process) -> None:
        if self._runtime is None or proc.pid is None:
            return
        try:
            started = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            return  # gone already: its watcher reports it
        boot, pidns = this_host()
        self._runtime.write(
            Record(
                url=backend.config.base_url,
                name=backend.name,
                group=proc.pid,  # the reaper leads the backend's process group
                started=started,
                fingerprint=fingerprint(backend.config),
                proxy_pid=os.getpid(),
                boot=boot,
                pidns=pidns,
            )
        )

    def _watch_exit(self, backend: Backend, proc: Process) -> None:
        watcher = asyncio.create_task(self._watch(backend, proc), name=f"watch:{backend.name}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _released(self, backend: Backend, pids: set[int]) -> None:
        cfg = backend.config.restart
        took, released = await wait_released(
            backend.name,
            pids,
            self.memory_of(backend),
            self._clock,
            settle_s=cfg.release_settle_s,
            limit_s=cfg.release_s,
        )
        if released:
            log.info("%s: its GPU memory is released (%.1fs after its exit)", backend.name, took)
        else:  # wait_released said what is left; going on is vLLM's start-up check's call
            log.warning(
                "%s: going on %.1fs after its exit, its memory maybe not released",
                backend.name,
                took,
            )

    def _forget(self, backend: Backend, proc: Process) -> None:
        """Its process is gone: its record too (never a newer process's: only while `proc` is
        still the backend's process)."""
        if self._runtime is not None and self._procs.get(backend.name) is proc:
            self._runtime.forget(backend.config.base_url)

    async def _gone(self, backend: Backend, proc: Process) -> None:
        """After its exit: record removed, memory released."""
        self._forget(backend, proc)
        await self._released(backend, proc.pids())

    async def settled(self, members: Iterable[Backend]) -> None:
        """Until the memory of every process of `members` that died by itself is released:
        the switching core awaits it before it starts or wakes anything on their GPU."""
        pending = [t for b in members if (t := self._releasing.get(b.name)) is not None]
        if pending:
            await asyncio.gather(*(asyncio.shield(t) for t in pending), return_exceptions=True)

    async def _watch(self, backend: Backend, proc: Process) -> None:
        code = await proc.wait()
        if proc.stopping:
            return
        # all bookkeeping first, with no await between the exit and its report: the record,
        # the crash history and the backoff; the memory release is waited for by whatever
        # starts or wakes next on the GPU (`settled`), not here - the report must not wait
        if isinstance(proc, AdoptedProcess) and (left := proc.end_leftovers()):
            log.warning("%s: SIGKILLed what it left running (pids %s)", backend.name, left)
        self._forget(backend, proc)
        now = self._clock.monotonic()
        crashes = self._crashes[backend.name]
        crashes.append(now)
        cfg = backend.config.restart
        while crashes and now - crashes[0] > cfg.window_s:
            crashes.popleft()
        if len(crashes) > cfg.max_restarts:  # a crash loop: FAILED for good (until the proxy
            self._given_up.add(backend.name)  # restarts), however long ago the crashes then lie
        backoff = min(cfg.max_backoff_s, cfg.backoff_s * 2 ** (len(crashes) - 1))
        self._not_before[backend.name] = now + backoff
        log.error(
            "backend %s exited with %s (crash %d within %gs); restart allowed in %.0fs",
            backend.name,
            code,
            len(crashes),
            cfg.window_s,
            backoff,
        )
        release = asyncio.create_task(
            self._released(backend, proc.pids()), name=f"release:{backend.name}"
        )
        self._releasing[backend.name] = release
        release.add_done_callback(partial(self._released_done, backend.name))
        self.on_exit(backend, code)  # the switching core applies it (Switcher.report_exit)

    def _released_done(self, name: str, task: asyncio.Task[None]) -> None:
        if self._releasing.get(name) is task:
            del self._releasing[name]

    async def kill(self, backend: Backend) -> None:
        """Kill a backend whose engine cannot be trusted (failed wake): frees its GPU memory."""
        proc = self._procs[backend.name]
        if proc.running:  # one that already exited (or never started) is left alone: an exit
            proc.kill()  # by itself stays a crash for its watcher
            if isinstance(proc, AdoptedProcess):
                await proc.wait_killed()  # bounded: not our child, no reaper behind it
            else:
                await proc.wait()  # bounded by the reaper, and the fallback behind it
            await self._gone(backend, proc)
        backend.holds_memory = False

    async def stop(self, backend: Backend) -> None:
        """An operator's restart, first half: stop the process (SIGTERM, then SIGKILL after
        `stop_grace_s`) - not a crash - and forget its crash history, a crash loop included.
        STOPPED afterwards; the next request (or the operator's wake) starts it."""
        proc = self._procs[backend.name]
        if backend.state is not BackendState.STOPPED:
            backend.set_state(BackendState.STOPPED)  # first: no lease is taken on it from here
        backend.end_drain()
        if proc.running:
            await proc.stop(backend.config.stop_grace_s)
            await self._gone(backend, proc)
        self._crashes[backend.name].clear()
        self._given_up.discard(backend.name)
        self._not_before.pop(backend.name, None)

    async def stop_all(self) -> None:
        async def stop(backend: Backend, proc: Process) -> None:
            code = await proc.stop(backend.config.stop_grace_s)
            if self._runtime is not None:
                self._runtime.forget(backend.config.base_url)
            if code is not None:
                log.info("stopped %s (exit %s)", backend.name, code)
            if backend.state is not BackendState.STOPPED and backend.state in (
                BackendState.READY,
                BackendState.ASLEEP,
                BackendState.FAILED,
                BackendState.STARTING,
            ):
                backend.set_state(BackendState.STOPPED)

        await asyncio.gather(*(stop(self._backends[n], p) for n, p in self._procs.items()))
        for w in [*self._watchers, *self._releasing.values()]:
            w.cancel()
        await asyncio.gather(*self._watchers, *self._releasing.values(), return_exceptions=True)


def _managed_process(config: ModelConfig) -> Process:
    return ManagedProcess(
        config.name,
        config.command or (),
        config.env,
        config.log_file,
        cwd=config.cwd or Path.cwd(),  # by path, fixed at start-up (see ModelConfig.cwd)
        grace_s=config.stop_grace_s,
    )
