"""upstream_transport: httpx's own connection pool, on plain asyncio sockets.

Why: with httpx's default transport, httpcore runs over anyio, and every time a request enters
or leaves the pool httpcore asks each idle connection `get_extra_info("is_readable")`; anyio
answers by building its whole table of socket attributes, which calls `getpeername()`. Under
64 concurrent requests that was a fifth of the proxy's CPU (py-spy, `bench/overhead.py
--profile`), and then the poll() behind each answer another 13 %. This network backend
answers from what the event loop already knows (EOF seen on the idle socket). The pool keeps
connections for 4 s, below vLLM's 5 s keep-alive, so a backend closing an idle connection
first only happens when it dies. Pooling, keep-alive,
HTTP/1.1 parsing and the exceptions httpx raises stay httpcore's and httpx's.

Backends are plain HTTP on a local network: TLS to a backend is not supported here (a
`https://` backend URL gets httpx's default transport, see `services.py`). Stateless apart
from the sockets each stream owns.
"""

# ruff: noqa: ASYNC109  (the `timeout` parameters are httpcore's network-backend interface)
from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

CLOSE_TIMEOUT_S = 1.0
SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


@contextlib.contextmanager
def _mapped(timeout: type[Exception], error: type[Exception]) -> Iterator[None]:
    try:
        yield
    except TimeoutError as exc:
        raise timeout(str(exc) or "timed out") from exc
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise error(str(exc) or type(exc).__name__) from exc


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._socket = writer.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with _mapped(httpcore.ReadTimeout, httpcore.ReadError):
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        with _mapped(httpcore.WriteTimeout, httpcore.WriteError):
            self._writer.write(buffer)
            async with asyncio.timeout(timeout):
                await self._writer.drain()

    async def aclose(self) -> None:
        self._writer.close()
        try:  # a backend that stopped reading must not hold the caller (shielded cleanups await this)
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._writer.wait_closed()
        except (TimeoutError, OSError):
            self._writer.transport.abort()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("TLS to a backend needs httpx's default transport")

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # asked of every idle connection whenever a request enters or leaves the pool: the
            # event loop already reads these sockets, so an EOF it saw answers without a poll()
            return self._reader.at_eof()
        if info == "socket":
            return self._socket
        if info == "client_addr":
            return self._writer.get_extra_info("sockname")
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        with _mapped(httpcore.ConnectTimeout, httpcore.ConnectError):
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, local_addr=(local_address, 0) if local_address else None
                )
        sock = writer.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Stream(reader, writer)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("unix sockets need httpx's default transport")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def upstream_transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's transport with its pool on `AsyncioBackend` (plain HTTP backends only)."""
    transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=AsyncioBackend(),
    )
    return transport
