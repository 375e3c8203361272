"""The proxy under uvicorn in the test's own event loop, on a pre-bound loopback socket (no port
race). `serve_proxy` owns the server task and stops it on exit; `RunningProxy` is what a test
sees of it: its URL and its `Services` (read-only: the tests look at states, never set them)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import uvicorn

from proxy.app import create_app
from proxy.cli import uvicorn_config
from proxy.config import ProxyConfig
from proxy.http.edge.listen import tcp_listener
from proxy.services import Services


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
            await asyncio.sleep(0.01)  # poll until uvicorn says it serves
    services: Services = app.state.services
    try:
        if reconciled:
            async with asyncio.timeout(30):
                await services.switcher.wait_reconciled()
        yield RunningProxy(f"http://127.0.0.1:{sock.getsockname()[1]}", services)
    finally:
        server.should_exit = True
        await task
