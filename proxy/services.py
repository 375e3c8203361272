"""Services: the object graph of one proxy (config, HTTP client, backends, switcher).

Built without I/O by `Services.build`; `running()` starts reconciliation in the background and
tears everything down on exit. One instance per app - no module-level singletons.

Owns the HTTP client and its transport, the background tasks (`spawn`: reconciliation, idle
sleep) and the parsed upstream URLs; everything else it only holds for the routes (backends are
the switching core's, see backends/backend.py for who writes them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx

from proxy.backends import Backend, VllmControl
from proxy.backends.gpu_memory import GpuMemory, open_gpu_memory
from proxy.backends.process import Process
from proxy.backends.runtime import RuntimeDir, default_runtime_dir
from proxy.backends.supervisor import Supervisor
from proxy.clock import Clock, SystemClock
from proxy.config import GpuConfig, ModelConfig, ProxyConfig
from proxy.errors import InvalidRequestError, ModelNotFoundError
from proxy.observability.events import Events
from proxy.observability.metrics import Metrics
from proxy.switching.operator import Operator
from proxy.switching.startup import start_up
from proxy.switching.switcher import Switcher
from proxy.upstream.transport import upstream_transport

log = logging.getLogger(__name__)
# vLLM closes idle keep-alive connections after 5 s: expire ours first so none is reused half-closed
KEEPALIVE_EXPIRY_S = 4.0
MAX_MODEL_NAME = 256
WRITE_TIMEOUT_S = 60.0


def forward_timeouts(model: ModelConfig) -> httpx.Timeout:
    """A forwarded request's limits, from its own model's config: connect, the whole response
    head (`read_s`, interim 1xx heads included), then each gap between body bytes (`read_s`)."""
    t = model.timeouts
    return httpx.Timeout(connect=t.connect_s, read=t.read_s, write=WRITE_TIMEOUT_S, pool=None)


@dataclass
class Services:
    config: ProxyConfig
    client: httpx.AsyncClient  # control calls (sleep, wake, health, warm-up)
    transport: httpx.AsyncBaseTransport  # the client's; forwarded requests go to it directly
    backends: dict[str, Backend]
    switcher: Switcher
    by_name: dict[str, ModelConfig]
    timeouts: dict[str, dict[str, float | None]]  # per model name: its forwarded requests' limits
    metrics: Metrics
    supervisor: Supervisor
    operator: Operator  # the admin API's model controls
    started: float = field(default_factory=time.time)
    _urls: dict[tuple[str, str], httpx.URL] = field(default_factory=dict)  # parsed once each
    _tasks: set[asyncio.Task[object]] = field(default_factory=set)

    @classmethod
    def build(
        cls,
        config: ProxyConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
        launcher: Callable[[ModelConfig], Process] | None = None,
        gpu_memory: Callable[[GpuConfig], GpuMemory | None] = open_gpu_memory,
    ) -> Services:
        """The object graph. `transport` (control calls and forwarding), `clock`, `launcher`
        (how a supervised backend's process is made) and `gpu_memory` (a GPU group's free
        memory reader) are the seams tests replace."""
        clock = clock or SystemClock()
        limits = httpx.Limits(
            max_connections=None,
            max_keepalive_connections=256,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
        )
        if transport is None:
            plain = all(m.base_url.startswith("http://") for m in config.models)
            # the proxy's own pool: about a third less CPU per request (docs/benchmarks.md)
            transport = (
                upstream_transport(limits) if plain else httpx.AsyncHTTPTransport(limits=limits)
            )
        # every call passes its model's own timeouts (forwarding here, control calls in
        # VllmControl); the client's default only guards a call that forgot to
        client = httpx.AsyncClient(transport=transport, timeout=5.0, limits=limits)
        backends = {m.name: Backend(m, VllmControl(m, client), clock) for m in config.models}
        by_name = {n: m for m in config.models for n in (m.name, *m.aliases)}
        timeouts = {m.name: forward_timeouts(m).as_dict() for m in config.models}
        metrics = Metrics([m.name for m in config.models])
        supervisor = Supervisor(
            backends,
            lambda name: metrics.restarts.labels(name).inc(),
            clock=clock,
            launcher=launcher,
            # with a launcher of its own (tests' fakes) nothing real runs: nothing to record
            runtime=None if launcher else RuntimeDir(config.runtime_dir or default_runtime_dir()),
        )
        switcher = Switcher(config, backends, metrics, supervisor, clock, gpu_memory, Events())
        metrics.watch(switcher.live)
        return cls(
            config,
            client,
            transport,
            backends,
            switcher,
            by_name,
            timeouts,
            metrics,
            supervisor,
            Operator(switcher, supervisor),
        )

    @property
    def events(self) -> Events:
        return self.switcher.events

    def resolve(self, model: object) -> ModelConfig:
        available = ", ".join(sorted(self.by_name))
        if model is None or model == "":
            raise InvalidRequestError(
                f"you must provide a model parameter; available models: {available}", param="model"
            )
        if not isinstance(model, str):
            raise InvalidRequestError(
                f"`model` must be a string; available models: {available}", param="model"
            )
        if len(model) > MAX_MODEL_NAME:
            raise InvalidRequestError(
                f"`model` is longer than {MAX_MODEL_NAME} characters", param="model"
            )
        try:
            return self.by_name[model]
        except KeyError:
            raise ModelNotFoundError(
                f"The model `{model[:256]}` does not exist; available models: {available}",
                param="model",
            ) from None

    def upstream_url(self, model: ModelConfig, path: str) -> httpx.URL:
        """The backend URL of one of the proxy's fixed routes (`path` never comes from a client)."""
        key = (model.name, path)
        if (url := self._urls.get(key)) is None:
            url = self._urls[key] = httpx.URL(f"{model.base_url}{path}")
        return url

    def spawn(self, work: Coroutine[Any, Any, object], *, name: str) -> None:
        """Run `work` in the background; kept referenced, cancelled at shutdown."""
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self.spawn(self._reconcile(), name="reconcile")
        if any(m.idle_sleep_s for m in self.config.models):
            self.spawn(self._sleep_idle_forever(), name="idle-sleep")
        try:
            yield
        finally:
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.switcher.close()
            await self.supervisor.stop_all()  # every process we started, by its process group
            await self.client.aclose()

    async def _sleep_idle_forever(self) -> None:
        await self.switcher.wait_reconciled()
        interval = min(1.0, min(m.idle_sleep_s or 1.0 for m in self.config.models) / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.switcher.sleep_idle(self.switcher.clock.monotonic())
            except Exception:
                log.exception("idle sleep pass failed")

    async def _reconcile(self) -> None:
        try:
            await start_up(self.switcher)
        except Exception:
            log.exception("start-up reconciliation failed")
            raise
