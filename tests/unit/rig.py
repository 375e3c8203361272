"""The fast layer's harness: configs for N models on one or two GPU groups, and a `Rig` - the
proxy's real object graph (Services.build) on FakeVllm servers, FakeProcesses and LoopClock.

`rig()` reconciles by default (and forgets the calls start-up made), so a test starts from the
steady state: the models named `awake` READY, the others ASLEEP. Every lease a test obtains
through the rig is checked against the fake server it would be forwarded to: a lease on a
sleeping or dead server (a request vLLM would hang or refuse) fails the test at teardown, as
does an answer on garbage weights.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from proxy.backends import Backend, Lease, WakeTimings
from proxy.backends.gpu_memory import GpuMemory
from proxy.backends.supervisor import Supervisor
from proxy.config import GpuConfig, ProxyConfig
from proxy.services import Services
from proxy.switching.startup import start_up
from proxy.switching.switcher import Switcher
from tests.unit.fake_vllm import FakeServer, FakeVllm
from tests.unit.fakes import FakeProcess, LoopClock

Spec = str | dict[str, Any]


def supervised(name: str, **extra: Any) -> dict[str, Any]:
    """A model whose backend the proxy starts itself (a FakeProcess in the rig)."""
    return {"name": name, "command": ["vllm", "serve", name, "--enable-sleep-mode"], **extra}


def build_config(
    *models: Spec,
    gpus: dict[str, int] | None = None,
    scheduling: dict[str, Any] | None = None,
    memory_gib: float | None = None,
    **top: Any,
) -> ProxyConfig:
    """Models (a name, or a dict with `name`) on GPU groups `gpus` (name: max_awake; default one
    group "g0" with max_awake 1, which models join unless they name their `gpu`).

    Every group schedules with `policy: fifo` unless `scheduling` says otherwise: the tests of
    the switching mechanics (drain, tickets, failures, supervision) want each switch to start
    the moment a request waits; the default policy's holds are tested on their own
    (test_scheduling.py) and as a pure function (test_policy*.py)."""
    groups = gpus or {"g0": 1}
    first = next(iter(groups))
    specs = [{"name": m} if isinstance(m, str) else m for m in models]
    full = [{"gpu": first, "url": f"http://127.0.0.1:{8001 + i}", **m} for i, m in enumerate(specs)]
    policy = scheduling or {"policy": "fifo"}
    declared = [
        {"name": g, "max_awake": n, "scheduling": policy, "memory_gib": memory_gib}
        for g, n in groups.items()
    ]
    return ProxyConfig.model_validate({"models": full, "gpus": declared, **top})


# two GPU groups of two models each, one awake per group
TWO_GROUPS = build_config(
    "model-a",
    "model-b",
    {"name": "model-c", "gpu": "g1"},
    {"name": "model-d", "gpu": "g1"},
    gpus={"g0": 1, "g1": 1},
)


async def until(condition: Callable[[], bool], *, spins: int = 10_000) -> None:
    """Yield to the loop (no time passes) until `condition` holds."""
    for _ in range(spins):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def settle(spins: int = 200) -> None:
    """Let every task that can run, run (no time passes)."""
    for _ in range(spins):
        await asyncio.sleep(0)


@dataclass
class Rig:
    config: ProxyConfig
    vllm: FakeVllm
    services: Services
    processes: dict[str, FakeProcess]
    check_leases: bool = True
    violations: list[str] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def switcher(self) -> Switcher:
        return self.services.switcher

    @property
    def supervisor(self) -> Supervisor:
        return self.services.supervisor

    def backend(self, name: str) -> Backend:
        return self.services.backends[name]

    def server(self, name: str) -> FakeServer:
        return next(s for s in self.vllm.servers.values() if s.name == name)

    def process(self, name: str) -> FakeProcess:
        return self.processes[name]

    def state(self, name: str) -> str:
        return self.backend(name).state.value

    def states(self) -> dict[str, str]:
        return {name: b.state.value for name, b in self.services.backends.items()}

    def forget(self) -> None:
        """Forget the calls so far (every server's and the common log)."""
        self.vllm.calls.clear()
        for server in self.vllm.servers.values():
            server.calls.clear()

    async def start_up(self) -> None:
        await start_up(self.switcher)

    async def lease(self, name: str) -> tuple[Lease, WakeTimings]:
        """One request's wait for its model, as the routes do it; the lease is checked."""
        lease, timings = await self.switcher.lease(name)
        server = self.server(name)
        if self.check_leases and (not server.up or server.is_sleeping or server.dead):
            self.violations.append(f"a lease on {name} while its server was not awake")
        return lease, timings

    def request(self, name: str) -> asyncio.Task[tuple[Lease, WakeTimings]]:
        task = asyncio.create_task(self.lease(name), name=f"request:{name}")
        self.tasks.append(task)
        return task

    async def served(self, name: str) -> WakeTimings:
        """A short request: leased, then released at once."""
        lease, timings = await self.lease(name)
        lease.release()
        return timings

    def switches(self, from_model: str, to_model: str, result: str) -> float:
        """vllm_switch_switches_total for one (from, to, result)."""
        labels = {"from_model": from_model, "to_model": to_model, "result": result}
        return self.counter("vllm_switch_switches_total", **labels)

    def counter(self, metric: str, **labels: str) -> float:
        value = self.services.metrics.registry.get_sample_value(metric, labels)
        return 0.0 if value is None else value


@asynccontextmanager
async def rig(
    config: ProxyConfig,
    *,
    awake: Collection[str] | None = None,
    down: Collection[str] = (),
    boot_s: float = 0.0,
    reconcile: bool = True,
    gpu_memory: Callable[[FakeVllm, GpuConfig], GpuMemory | None] | None = None,
) -> AsyncIterator[Rig]:
    """Servers for every model (attached ones up, asleep unless `awake` - default: the last
    model - or `down`; supervised ones down until their process starts), then the proxy.
    `gpu_memory` makes a group's free-memory reader from the fake servers (default: none)."""
    vllm = FakeVllm()
    processes: dict[str, FakeProcess] = {}
    awake = {config.models[-1].name} if awake is None else set(awake)
    for m in config.models:
        server = vllm.add(
            m.name,
            m.base_url,
            served_name=m.backend_model,
            up=not m.supervised and m.name not in down,
            asleep=m.name not in awake,
            level=m.sleep_level,
        )
        if m.supervised:
            processes[m.name] = FakeProcess(vllm, server, boot_s=boot_s)
    services = Services.build(
        config,
        transport=vllm.transport,
        clock=LoopClock(),
        launcher=lambda m: processes[m.name],
        gpu_memory=(lambda gpu: gpu_memory(vllm, gpu)) if gpu_memory else (lambda gpu: None),
    )
    r = Rig(config, vllm, services, processes)
    try:
        if reconcile:
            await r.start_up()
            r.forget()
        yield r
    finally:
        for task in r.tasks:
            task.cancel()
        await asyncio.gather(*r.tasks, return_exceptions=True)
        await services.switcher.close()
        await services.supervisor.stop_all()
        await services.client.aclose()
    assert r.violations == []
    garbage = {s.name: s.stats["garbage"] for s in vllm.servers.values() if s.stats["garbage"]}
    assert garbage == {}, "answers on weights a level-2 wake never reloaded"
