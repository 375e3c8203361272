"""The proxy's upstream transport (httpx's pool on plain asyncio sockets) fails the way httpx's
own does, and notices a backend that closed an idle keep-alive connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from proxy.transport import upstream_transport
from tests.processes import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
LIMITS = httpx.Limits(max_keepalive_connections=8, keepalive_expiry=30)
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


@asynccontextmanager
async def server(handle: Handler) -> AsyncIterator[str]:
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with srv:
        yield f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"


def client(timeout: float = 5) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=upstream_transport(LIMITS), timeout=timeout)


async def test_refused_connection_is_httpx_connect_error() -> None:
    async with client() as c:
        with pytest.raises(httpx.ConnectError):
            await c.get(f"http://127.0.0.1:{free_port()}/")


async def test_silent_backend_is_httpx_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns once the client gives up and closes
        writer.close()

    async with server(silent) as url, client(timeout=0.2) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.get(url)


async def test_idle_connection_closed_by_the_backend_is_not_reused() -> None:
    connections = 0
    closed = asyncio.Event()

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        await writer.drain()
        writer.close()  # keep-alive promised, then closed while idle (as at a server timeout)
        await writer.wait_closed()
        closed.set()

    async with server(answer_once) as url, client() as c:
        first = await c.get(url)
        await closed.wait()  # the backend closed it (on loopback the FIN is there at once)
        second = await c.get(url)
    assert (first.text, second.text) == ("ok", "ok")
    assert connections == 2
