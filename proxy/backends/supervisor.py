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
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

from proxy.backends import Backend, BackendState
from proxy.backends.probe import probe_backend
from proxy.backends.process import ManagedProcess, Process
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
    ) -> None:
        self._backends = backends
        self._on_restart = on_restart  # counts a restart (the metrics' restarts counter)
        self._clock = clock or SystemClock()
        launch = launcher or _managed_process
        self._procs = {b.name: launch(b.config) for b in backends.values() if b.config.supervised}
        self._crashes: dict[str, deque[float]] = {name: deque() for name in self._procs}
        self._not_before: dict[str, float] = {}
        self._given_up: set[str] = set()  # crash loops: never restarted again
        # told when a process died by itself (not stopped, not killed by us); set by the Switcher
        self.on_exit: Callable[[Backend, int], None] = lambda _backend, _code: None
        self._watchers: set[asyncio.Task[None]] = set()
        self._starts: dict[str, int] = dict.fromkeys(self._procs, 0)

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
        if (taken := await self._occupant(backend)) is not None:
            raise StartError(taken)
        backend.set_state(BackendState.STARTING)
        self._starts[backend.name] += 1
        if self._starts[backend.name] > 1:
            self._on_restart(backend.name)
        await proc.start()
        watcher = asyncio.create_task(self._watch(backend, proc), name=f"watch:{backend.name}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        while not await backend.control.health():
            if not proc.running:
                tail = "\n".join(proc.tail()[-5:])
                raise StartError(
                    f"process exited with {proc.returncode} while starting; last output:\n{tail}"
                )
            await asyncio.sleep(HEALTH_POLL_S)

    async def _occupant(self, backend: Backend) -> str | None:
        """What answers at the URL of a backend about to be started, or None (nothing: the
        port is free). Never the proxy's own process: this runs only when it has none."""
        if not await backend.control.health():
            return None
        report = await probe_backend(backend.config, backend.control.client, needs_sleep=False)
        where = backend.config.base_url
        if backend.config.backend_model in report.served:
            return (
                f"a vLLM serving {backend.config.backend_model!r} already listens at {where}, "
                "not started by this proxy: stop it, or configure the model with `url` only "
                "(no `command`) to attach it"
            )
        served = ", ".join(map(repr, report.served)) or "no vLLM model"
        return (
            f"the port of {where} is taken by another process (it serves {served}); free the "
            "port or change the model's url"
        )

    async def _watch(self, backend: Backend, proc: Process) -> None:
        code = await proc.wait()
        if proc.stopping:
            return
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
        self.on_exit(backend, code)  # the switching core applies it (Switcher.report_exit)

    async def kill(self, backend: Backend) -> None:
        """Kill a backend whose engine cannot be trusted (failed wake): frees its GPU memory."""
        proc = self._procs[backend.name]
        if proc.running:  # one that already exited (or never started) is left alone: an exit
            proc.kill()  # by itself stays a crash for its watcher
            await proc.wait()
        backend.holds_memory = False

    async def stop(self, backend: Backend) -> None:
        """An operator's restart, first half: stop the process (SIGTERM, then SIGKILL after
        `stop_grace_s`) - not a crash - and forget its crash history, a crash loop included.
        STOPPED afterwards; the next request (or the operator's wake) starts it."""
        proc = self._procs[backend.name]
        if backend.state is not BackendState.STOPPED:
            backend.set_state(BackendState.STOPPED)  # first: no lease is taken on it from here
        backend.end_drain()
        await proc.stop(backend.config.stop_grace_s)
        self._crashes[backend.name].clear()
        self._given_up.discard(backend.name)
        self._not_before.pop(backend.name, None)

    async def stop_all(self) -> None:
        async def stop(backend: Backend, proc: Process) -> None:
            code = await proc.stop(backend.config.stop_grace_s)
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
        for w in list(self._watchers):
            w.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)


def _managed_process(config: ModelConfig) -> Process:
    return ManagedProcess(
        config.name,
        config.command or (),
        config.env,
        config.log_file,
        cwd=config.cwd or Path.cwd(),  # by path, fixed at start-up (see ModelConfig.cwd)
        grace_s=config.stop_grace_s,
    )
