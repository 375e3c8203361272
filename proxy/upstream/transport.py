"""UpstreamTransport: the proxy's keep-alive pool of HTTP/1.1 connections to its backends, on
asyncio protocols, plugged into httpx (callers keep httpx's Request, Response and exceptions).

Why not httpx's default transport: py-spy at 64 concurrent (docs/benchmarks.md) found httpcore's
pool doing per-request work for every open connection and h11 parsing each SSE chunk through its
event machinery. Here a pool event is O(1) (a stack of idle connections per backend), a request
goes out in one write, and responses are parsed by llhttp as the bytes arrive (`proxy/upstream/http1.py`).

What keeps one client's answer from reaching another:
- an idle connection that receives any byte (an unsolicited or late response) or EOF is closed at
  once and never reused; a response followed by more bytes leaves its connection unusable;
- a POST is written at most once: an idle connection is checked before the write (`quiet`), and
  nothing is retried after it (a backend that fails later may have started the work); a GET on a
  reused connection that died before a byte came back is sent once more, on a new connection;
- every connection parses each response from a fresh parser, at a message boundary.
Body bytes (partial chunks included) are handed on as they arrive; reading pauses while more
than `HIGH_WATER` bytes wait for the caller, so memory stays bounded whatever a backend declares.
Timeouts come from each request (`extensions["timeout"]`): connect, write, `read` as the limit
for the whole response head (interim 1xx heads included) and then for each gap in the body.

Backends are plain HTTP on a local network: `https://` URLs get httpx's default transport
(services.py). Request bodies are sent whole (the proxy has read them already).

State: `UpstreamTransport` owns the idle connections; a `_Connection` is driven by the event
loop's callbacks (parse, wake the waiter) and by the one task that owns its exchange; a response
body in flight owns its connection until closed, then hands it back (read to its end, reusable)
or closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import select
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import cast

import httpx

from proxy.upstream.http1 import Head, ResponseParser, request_head

HIGH_WATER = 256 * 1024  # body bytes waiting for the caller before reading pauses
# Linux's TCP_QUICKACK: ack a backend's segments at once instead of up to 40 ms later. vLLM 0.26
# binds its socket without TCP_NODELAY (see proxy/http/edge/listen.py), so Nagle holds its
# response body until the head's segment is acked - by the proxy's delayed ACK, ~40 ms per
# answer on a keep-alive connection (bench/scheduling.py: 104 ms -> ~60 ms for a 60 ms
# request). The flag is not sticky: it is set again whenever data comes.
QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
IDEMPOTENT = frozenset({"GET", "OPTIONS"})  # (never HEAD: its answer has no body to parse)
Origin = tuple[str, int]


def _quickack(sock: socket.socket) -> None:
    if QUICKACK is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)


class _Connection(asyncio.Protocol):
    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.idle_since = 0.0
        self._transport: asyncio.Transport | None = None
        self._parser: ResponseParser | None = None  # the response being read; None while idle
        self._error: Exception | None = None  # why the exchange failed, for its owner
        self._waiter: asyncio.Future[None] | None = None  # the owner waits for bytes/EOF
        self._drained: asyncio.Future[None] | None = None  # the owner waits for a full send
        self._paused = False
        self._dead = False
        self._fd = -1
        self._poll: select.poll | None = None
        self._quickack: Callable[[], None] | None = None
        self.received = False  # a byte of the current exchange's response came

    # event-loop callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop calls this soon after create_connection returns; _connect calls it first)
        if self._transport is not None:
            return
        self._transport = cast(asyncio.Transport, transport)  # (uvloop's: not a subclass)
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno()
        with contextlib.suppress(OSError, AttributeError):  # a request, a chunk: out at once
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if QUICKACK is not None:
            self._quickack = functools.partial(_quickack, sock)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # idle: a stray response would be the next client's answer
            self.close()
            return
        self.received = True
        if self._quickack is not None:
            self._quickack()  # ACK what comes next at once (see QUICKACK)
        try:
            parser.feed(data)
        except httpx.RemoteProtocolError as exc:
            self._fail(exc)
            return
        if parser.trailing:
            self._dead = True
        if parser.buffered > HIGH_WATER or parser.trailing:
            self._pause()
        self._wake()

    def eof_received(self) -> bool:
        self._dead = True
        if self._parser is not None:
            try:
                self._parser.feed_eof()
            except httpx.RemoteProtocolError as exc:
                self._fail(exc)
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._dead = True
        if self._parser is not None and not self._parser.complete and self._error is None:
            reason = f": {exc}" if exc else ""
            self._error = httpx.ReadError(f"backend connection lost{reason}")
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    # the owner's side

    def alive(self) -> bool:
        return not self._dead and self._transport is not None and not self._transport.is_closing()

    def quiet(self) -> bool:
        """An idle connection still fit for a request: alive, and no byte or EOF waits in the
        socket that the event loop has not handed on yet (one poll, as httpcore does; a FIN
        that came a moment ago would otherwise meet our request)."""
        if not self.alive():
            return False
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(self._fd, select.POLLIN)
        return not self._poll.poll(0)

    def close(self) -> None:
        """Close now, without waiting (unread bytes make the kernel reset the connection)."""
        self._dead = True
        if self._transport is not None:
            self._transport.close()

    async def send(self, data: bytes, write_s: float | None) -> None:
        """Write the request once and start reading its response."""
        assert self._transport is not None
        self._parser = ResponseParser()
        self._error = None
        self.received = False
        self._transport.write(data)
        if self._drained is not None:
            try:
                async with asyncio.timeout(write_s):
                    await self._drained
            except TimeoutError:
                raise httpx.WriteTimeout("timed out writing to the backend") from None

    async def head(self, limit_s: float | None) -> Head:
        """The final response head, within `limit_s` from now (interim 1xx heads included)."""
        parser = self._parser
        assert parser is not None
        try:
            async with asyncio.timeout(limit_s):
                while parser.head is None:
                    await self._wait()
        except TimeoutError:
            raise httpx.ReadTimeout("timed out waiting for the response head") from None
        return parser.head

    async def body(self, gap_s: float | None) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (chunked coding removed)."""
        parser = self._parser
        assert parser is not None
        while True:
            if parser.buffered:
                data = parser.take_body()
                if self._paused and not parser.trailing:
                    self._paused = False
                    assert self._transport is not None
                    self._transport.resume_reading()
                yield data
            elif parser.complete:
                return
            else:
                try:
                    async with asyncio.timeout(gap_s):
                        await self._wait()
                except TimeoutError:
                    raise httpx.ReadTimeout("timed out reading the response body") from None

    @property
    def finished(self) -> bool:
        """The response was read to its end and the connection may carry another request."""
        p = self._parser
        return p is not None and p.complete and not p.trailing and p.head is not None

    def end_exchange(self) -> None:
        """The response was read to its end: idle now, reading on (so a stray byte is seen)."""
        self._parser = None
        if self._paused and self._transport is not None:
            self._paused = False  # (a caller that left its last bytes untaken)
            self._transport.resume_reading()

    # internals

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter  # the caller looks at what came, then waits again (or raises)
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        self._error = exc
        self.close()
        self._wake()

    def _pause(self) -> None:
        if not self._paused and self._transport is not None and not self._transport.is_closing():
            self._paused = True
            self._transport.pause_reading()


class _Body(httpx.AsyncByteStream):
    """A response body; owns its connection until closed."""

    def __init__(
        self, pool: UpstreamTransport, conn: _Connection, head: Head, request: httpx.Request
    ) -> None:
        self._pool = pool
        self._conn = conn
        self._gap_s: float | None = request.extensions.get("timeout", {}).get("read")
        self._request = request
        self._closed = False
        asked_close = request.headers.get("connection", "").lower() == "close"
        self._reusable = head.keep_alive and not asked_close

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._conn.body(self._gap_s):
                yield data
        except httpx.RequestError as exc:
            exc.request = self._request
            raise

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        conn = self._conn
        if self._reusable and conn.finished and conn.alive():
            conn.end_exchange()
            self._pool.give_back(conn)
        else:  # unread body left: closing is the only way to stop the backend's work
            conn.close()


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
        assert isinstance(request.stream, httpx.AsyncByteStream)
        body = b"".join([part async for part in request.stream])
        if request.headers.get("transfer-encoding", "").lower() == "chunked":
            body = (b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)) if body else b"0\r\n\r\n"
        data = request_head(request.method.encode(), url.raw_path, request.headers.raw) + body
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        origin = (url.host, url.port or 80)
        reused = self._reuse(origin)
        while True:
            conn = reused or await self._connect(origin, timeouts.get("connect"), request)
            try:
                if reused is None and not conn.quiet():  # it spoke before being asked
                    raise httpx.RemoteProtocolError("backend sent bytes before the request")
                await conn.send(data, timeouts.get("write"))
                head = await conn.head(timeouts.get("read"))
                break
            except BaseException as exc:
                conn.close()
                if (
                    reused is not None
                    and request.method in IDEMPOTENT
                    and isinstance(exc, (httpx.ReadError, httpx.RemoteProtocolError))
                    and not conn.received
                ):  # a reused connection that died before answering: once more, on a new one
                    reused = None  # (never a POST: it may have reached the backend)
                    continue
                if isinstance(exc, httpx.RequestError):
                    exc.request = request
                raise
        return httpx.Response(
            head.status,
            headers=head.headers,
            stream=_Body(self, conn, head, request),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": head.reason},
            request=request,
        )

    @staticmethod
    async def _connect(
        origin: Origin, limit_s: float | None, request: httpx.Request
    ) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(limit_s):
                transport, conn = await loop.create_connection(lambda: _Connection(origin), *origin)
            conn.connection_made(transport)
        except TimeoutError:
            raise httpx.ConnectTimeout("timed out connecting", request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        return conn

    def _reuse(self, origin: Origin) -> _Connection | None:
        stack = self._idle.get(origin)
        now = self._clock()
        while stack:
            conn = stack.pop()  # the most recently used: the least likely to have expired
            self._idle_count -= 1
            if not self._expired(conn, now) and conn.quiet():
                return conn
            conn.close()
        return None

    def _expired(self, conn: _Connection, now: float) -> bool:
        return self._expiry is not None and now - conn.idle_since >= self._expiry

    def give_back(self, conn: _Connection) -> None:
        """A connection whose response was read to its end goes back on its stack."""
        now = self._clock()
        self._sweep(now)
        if self._closed or not conn.alive() or self._idle_count == self._max_idle:
            conn.close()
            return
        conn.idle_since = now
        self._idle.setdefault(conn.origin, []).append(conn)
        self._idle_count += 1

    def _sweep(self, now: float) -> None:
        """Close expired or dead idle connections of every backend (the oldest sit at the
        bottom), so that a model nobody asks for any more does not keep the shared budget."""
        for stack in self._idle.values():
            while stack and (self._expired(stack[0], now) or not stack[0].alive()):
                stack.pop(0).close()
                self._idle_count -= 1

    async def aclose(self) -> None:
        self._closed = True
        for stack in self._idle.values():
            for conn in stack:
                conn.close()
        self._idle.clear()
        self._idle_count = 0


def upstream_transport(limits: httpx.Limits) -> UpstreamTransport:
    """The pool for plain-HTTP backends (`limits.max_connections` is not enforced: the proxy
    runs with no connection cap; each in-flight request holds one connection)."""
    return UpstreamTransport(limits)
