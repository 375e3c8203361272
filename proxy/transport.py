"""upstream_transport: the proxy's own keep-alive pool of HTTP/1.1 connections to its backends,
plugged into httpx (callers keep httpx's Request, Response and exceptions).

Why not httpx's default transport: py-spy on the proxy at 64 concurrent (`bench/overhead.py
--profile`, docs/benchmarks.md) found httpcore's pool doing per-request work for every open
connection (anyio's `getpeername()` for each idle one, then a quadratic `len([...])` scan), and
h11 parsing every SSE chunk through its event machinery. Here a pool event is O(1) (a stack of
idle connections per backend; an idle one the backend closed shows as EOF, which the event loop
already saw, and expired ones of every backend are closed as connections come back), a request
goes out in one write (head and body), and a response is parsed from whole socket reads
(`proxy/http1.py`). A request on a reused connection that the backend had just closed, to which
not a byte came back within `RETRY_WINDOW_S`, is sent once more on a new connection. Idle connections are kept `keepalive_expiry` seconds
(4 s, below vLLM's 5 s keep-alive), so a backend closing one first only happens when it dies.

Backends are plain HTTP on a local network: `https://` backend URLs get httpx's default
transport (see `services.py`). Request bodies are sent whole (the proxy has read them already).

State: `UpstreamTransport` owns the idle connections; a response body in flight owns its
connection until it is closed, then hands it back (read to its end, reusable) or closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx

from proxy.http1 import Head, PeerClosedError, Wire, request_head

CLOSE_TIMEOUT_S = 1.0
RETRY_WINDOW_S = 0.25  # a FIN in flight arrives within a LAN round trip, not seconds later
Origin = tuple[str, int]


@dataclass(eq=False)
class _Connection:
    origin: Origin
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    wire: Wire
    idle_since: float = field(default=0.0)

    def alive(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def drop(self) -> None:
        """Close now, without waiting (the event loop finishes it)."""
        self.writer.close()

    async def aclose(self) -> None:
        self.writer.close()
        try:  # a backend that stopped reading must not hold the caller (shielded cleanups await this)
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.writer.wait_closed()
        except (TimeoutError, OSError):
            self.writer.transport.abort()


class _Body(httpx.AsyncByteStream):
    """A response body; owns its connection until closed."""

    def __init__(
        self, pool: UpstreamTransport, conn: _Connection, head: Head, request: httpx.Request
    ) -> None:
        self._pool = pool
        self._conn = conn
        self._head = head
        self._request = request
        self._complete = False
        self._closed = False
        asked_close = request.headers.get("connection", "").lower() == "close"
        self._reusable = head.keep_alive and not asked_close

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._conn.wire.body(self._head):
                yield data
        except PeerClosedError:
            raise httpx.RemoteProtocolError(
                "backend closed the connection before the response body ended",
                request=self._request,
            ) from None
        except httpx.RequestError as exc:
            exc.request = self._request
            raise
        self._complete = True

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._complete and self._reusable and self._conn.wire.clean:
            self._pool.give_back(self._conn)
        else:  # unread body left: closing is the only way to stop the backend's work
            await self._conn.aclose()


class UpstreamTransport(httpx.AsyncBaseTransport):
    def __init__(self, limits: httpx.Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock  # for idle expiry (tests pass their own)
        self._idle: dict[Origin, list[_Connection]] = {}
        self._idle_count = 0
        self._max_idle = limits.max_keepalive_connections
        self._expiry = limits.keepalive_expiry
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"{url.scheme!r} needs httpx's default transport")
        method = request.method.encode()
        assert isinstance(request.stream, httpx.AsyncByteStream)
        body = b"".join([part async for part in request.stream])
        headers = request.headers.raw
        if request.headers.get("transfer-encoding", "").lower() == "chunked":
            body = (b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)) if body else b"0\r\n\r\n"
        data = request_head(method, url.raw_path, headers) + body
        conn, head = await self._exchange((url.host, url.port or 80), data, method, request)
        return httpx.Response(
            head.status,
            headers=head.headers,
            stream=_Body(self, conn, head, request),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": head.reason},
            request=request,
        )

    async def _exchange(
        self, origin: Origin, data: bytes, method: bytes, request: httpx.Request
    ) -> tuple[_Connection, Head]:
        """Send the request and read the response head, on an idle connection if there is one."""
        timeout = request.extensions.get("timeout", {})
        reused = self._reuse(origin)
        while True:
            conn = reused or await self._connect(origin, timeout.get("connect"), request)
            conn.wire.read_timeout = timeout.get("read")
            sent = time.monotonic()
            try:
                await self._send(conn, data, timeout.get("write"), request)
                return conn, await conn.wire.head(method)
            except BaseException as exc:
                conn.drop()
                if (
                    isinstance(exc, (PeerClosedError, httpx.ReadError, httpx.WriteError))
                    and reused
                    and conn.wire.clean
                    and time.monotonic() - sent < RETRY_WINDOW_S
                ):
                    # an idle connection the backend had just closed (its FIN still in flight
                    # when it was picked), and nothing came back: the request was never taken.
                    # Once more, on a new connection. (A backend that fails later may have
                    # done the work: no retry then.)
                    reused = None
                    continue
                if isinstance(exc, PeerClosedError):
                    raise httpx.RemoteProtocolError(
                        "backend disconnected without sending a response", request=request
                    ) from None
                if isinstance(exc, httpx.RequestError):
                    exc.request = request
                raise

    async def _connect(
        self, origin: Origin, limit_s: float | None, request: httpx.Request
    ) -> _Connection:
        try:
            async with asyncio.timeout(limit_s):
                reader, writer = await asyncio.open_connection(*origin)
        except TimeoutError:
            raise httpx.ConnectTimeout("timed out connecting", request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        with contextlib.suppress(OSError):  # small writes (a request, a chunk) go out at once
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(origin, reader, writer, Wire(reader, None))

    @staticmethod
    async def _send(
        conn: _Connection, data: bytes, limit_s: float | None, request: httpx.Request
    ) -> None:
        try:
            conn.writer.write(data)
            if conn.writer.transport.get_write_buffer_size():  # the kernel took less than all
                async with asyncio.timeout(limit_s):
                    await conn.writer.drain()
        except TimeoutError:
            raise httpx.WriteTimeout("timed out writing", request=request) from None
        except OSError as exc:
            raise httpx.WriteError(str(exc) or type(exc).__name__, request=request) from exc

    def _reuse(self, origin: Origin) -> _Connection | None:
        stack = self._idle.get(origin)
        now = self._clock()
        while stack:
            conn = stack.pop()  # the most recently used: the least likely to have expired
            self._idle_count -= 1
            if conn.alive() and not self._expired(conn, now):
                return conn
            conn.drop()
        return None

    def _expired(self, conn: _Connection, now: float) -> bool:
        return self._expiry is not None and now - conn.idle_since >= self._expiry

    def give_back(self, conn: _Connection) -> None:
        """A connection whose response was read to its end goes back on its stack."""
        now = self._clock()
        self._sweep(now)
        if self._closed or not conn.alive() or self._idle_count == self._max_idle:
            conn.drop()
            return
        conn.idle_since = now
        self._idle.setdefault(conn.origin, []).append(conn)
        self._idle_count += 1

    def _sweep(self, now: float) -> None:
        """Close expired idle connections of every backend (the oldest sit at the bottom), so
        that a model nobody asks for any more does not keep the shared idle budget."""
        for stack in self._idle.values():
            while stack and (self._expired(stack[0], now) or not stack[0].alive()):
                stack.pop(0).drop()
                self._idle_count -= 1

    async def aclose(self) -> None:
        self._closed = True
        idle = [c for stack in self._idle.values() for c in stack]
        self._idle.clear()
        self._idle_count = 0
        await asyncio.gather(*(c.aclose() for c in idle))


def upstream_transport(limits: httpx.Limits) -> UpstreamTransport:
    """The pool for plain-HTTP backends (`limits.max_connections` is not enforced: the proxy
    runs with no connection cap; each in-flight request holds one connection)."""
    return UpstreamTransport(limits)
