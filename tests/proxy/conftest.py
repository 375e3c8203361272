"""Real processes for gateway tests: emulated vLLM servers on a fake GPU, the proxy under uvicorn.

`fleet` starts emulators sequentially (as they must start on one GPU) and, at teardown,
checks two of the design's invariants on every test that used it:
  1. memory: no wake ever failed for lack of fake GPU memory (ledger `oom_events == 0`);
  2. routing: no request ever reached a sleeping backend (`requests_queued_while_asleep == 0`).
Tests that inject those very faults opt out with `@pytest.mark.faults`.
The proxy runs in the test's event loop on a pre-bound socket (no port race).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import uvloop

from proxy.app import create_app
from proxy.cli import uvicorn_config
from proxy.config import ProxyConfig
from proxy.emulator.launcher import EmulatorProcess, bootstrap_sequentially, spawn_emulator
from proxy.http.edge.listen import tcp_listener
from proxy.services import Services
from tests.processes import emulator_stats, free_port

GPU = "g0"
# the upstream client's tests run on both event loops: `vllm-switch serve` runs uvloop, whose
# transports differ from asyncio's (connection_made timing, pause/resume, socket objects)
BOTH_LOOPS = {"tests.proxy.test_transport", "tests.proxy.test_upstream_edges"}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    module = getattr(item, "module", None)
    if module is not None and module.__name__ in BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


def emu_args(name: str, ledger: Path, *extra: str, util: float = 0.55) -> list[str]:
    """One model on the shared 80 GiB fake GPU: at util 0.55 only one fits awake."""
    return [
        name,
        "--served-model-name",
        name,
        "--enable-sleep-mode",
        "--gpu-memory-utilization",
        str(util),
        "--emu-gpu",
        GPU,
        "--emu-gpu-memory-gib",
        "80",
        "--emu-ledger-dir",
        str(ledger),
        "--emu-timing",
        "instant",
        "--max-model-len",
        "4096",
        *extra,
    ]


@dataclass
class Fleet:
    workdir: Path
    emulators: dict[str, EmulatorProcess] = field(default_factory=dict)

    @property
    def ledger_dir(self) -> Path:
        return self.workdir / "ledger"

    def start(self, *specs: tuple[str, Sequence[str]]) -> None:
        """Start (name, extra emulator args) servers one by one; the last stays awake."""
        servers = [(name, emu_args(name, self.ledger_dir, *extra)) for name, extra in specs]
        for emu in bootstrap_sequentially(self.workdir, servers):
            self.emulators[emu.port_file.stem] = emu

    def spawn(self, name: str, args: Sequence[str]) -> EmulatorProcess:
        emu = spawn_emulator(self.workdir, args, name=name)
        self.emulators[name] = emu
        emu.wait_listening()
        return emu

    def spawn_later(self, name: str, args: Sequence[str]) -> EmulatorProcess:
        """Start without waiting: on a port chosen now, so its URL is known while it starts."""
        port = free_port()
        emu = spawn_emulator(self.workdir, args, name=name, port=port)
        emu.port = port
        self.emulators[name] = emu
        return emu

    def url(self, name: str) -> str:
        return self.emulators[name].url

    def stats(self, name: str) -> dict[str, Any]:
        return emulator_stats(self.url(name))

    def counters(self, name: str) -> dict[str, int]:
        return self.stats(name)["stats"]  # type: ignore[no-any-return]

    def ledger(self) -> dict[str, Any]:
        path = self.ledger_dir / f"{GPU}.json"
        data = json.loads(path.read_text()) if path.exists() else {"oom_events": 0}
        return data


@pytest.fixture
def fleet(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    try:
        yield f
        if request.node.get_closest_marker("faults") is None:
            assert f.ledger()["oom_events"] == 0, "a wake failed for lack of GPU memory"
            for name, emu in f.emulators.items():
                if emu.proc.poll() is None:
                    queued = f.counters(name).get("requests_queued_while_asleep", 0)
                    assert queued == 0, f"{queued} request(s) reached {name} while it slept"
    finally:
        for emu in f.emulators.values():
            emu.stop()


def config_for(fleet: Fleet, models: Sequence[dict[str, Any]], **top: Any) -> ProxyConfig:
    """A ProxyConfig for emulators of `fleet`: each model dict needs `name`; url/gpu are filled."""
    full = [{"gpu": GPU, **m, "url": m.get("url") or fleet.url(m["name"])} for m in models]
    return ProxyConfig.model_validate(
        {"models": full, "gpus": [{"name": GPU, "max_awake": 1}], **top}
    )


@dataclass
class RunningProxy:
    url: str
    services: Services

    def state(self, name: str) -> str:
        return self.services.backends[name].state.value


@asynccontextmanager
async def serve_proxy(
    config: ProxyConfig, *, reconciled: bool = True
) -> AsyncIterator[RunningProxy]:
    """The proxy under uvicorn; by default yields once start-up reconciliation is done."""
    app = create_app(config)
    sock = tcp_listener("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn_config(app, config, "warning", grace_s=5))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(30):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    services: Services = app.state.services
    try:
        if reconciled:
            async with asyncio.timeout(30):
                await services.switcher.wait_reconciled()
        yield RunningProxy(f"http://127.0.0.1:{sock.getsockname()[1]}", services)
    finally:
        server.should_exit = True
        await task


ProxyFactory = Callable[[ProxyConfig], Any]


def chat(model: str, max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Hello there"}],
        "max_tokens": max_tokens,
        **extra,
    }
