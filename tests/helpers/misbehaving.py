"""A scriptable misbehaving HTTP/1.1 backend on loopback, for tests of the proxy's upstream edge.

`Misbehaving` is a raw-TCP asyncio server on 127.0.0.1 (port 0). It answers what the proxy's
start-up reconciliation and Sleep Mode calls need (`GET /health` 200, `GET /is_sleeping`
`{"is_sleeping": false}`, 200 for /sleep, /wake_up, /collective_rpc, /reset_prefix_cache;
closing after a `Connection: close` request), so a model whose `url` points at it becomes
READY without a warm-up (an attached backend that is awake is adopted as is). Every other
request takes the next *plan* from `plans` (or `default`, an echo, when none is left): a list
of actions run in order on that request's connection, e.g.

    backend.plans.append([send(b"HTTP/1.1 999 X\\r\\n\\r\\n")])      # a malformed answer
    backend.plans.append([echo(), wait(event), send(stray)])        # then a stray one, idle
    backend.plans.append([hang()])                                  # never answer

After a plan the connection waits for its next request, unless an action ended it (`close`,
`reset`, `hang`). Every connection and every request (head and body) is recorded.

State: a `Misbehaving` owns its listening server, the `plans` queue, `connections` (one
`Connection` per accepted socket, in accept order) and the handler tasks. Each handler task
alone writes to its `Connection` (its socket, `requests`, `closed`); tests only read them,
wait on `until`, set the events that plans wait on, and append to `plans` before the request
that pops a plan arrives.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Headers = list[tuple[bytes, bytes]]
CONTROL = {  # what vLLM's Sleep Mode endpoints answer (an awake server)
    **dict.fromkeys([b"/health", b"/sleep", b"/wake_up", b"/reset_prefix_cache"], b""),
    b"/is_sleeping": b'{"is_sleeping":false}',
    b"/collective_rpc": b"{}",
    # the start-up probe's reads (proxy/backends/probe.py): no model list, no config = unknown
    **dict.fromkeys([b"/v1/models", b"/server_info"], b"{}"),
}


@dataclass
class Request:
    method: bytes
    target: bytes
    headers: Headers
    body: bytes

    @property
    def path(self) -> bytes:
        return self.target.split(b"?", 1)[0]

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(eq=False)
class Connection:
    id: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    requests: list[Request] = field(default_factory=list)
    ended: bool = False  # an action ended the connection: no further request is read
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # the socket is closed
    peer_closed: bool = False  # the proxy closed first (EOF or reset seen while reading)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


Action = Callable[[Connection, Request], Awaitable[None]]
Plan = Sequence[Action]


def response(status: int = 200, body: bytes = b"", headers: Headers | None = None) -> bytes:
    """A well-formed Content-Length response."""
    lines = [b"HTTP/1.1 %d X\r\n" % status]
    lines += [b"%s: %s\r\n" % kv for kv in headers or [(b"content-type", b"application/json")]]
    return b"".join([*lines, b"content-length: %d\r\n\r\n" % len(body), body])


def echo(status: int = 200) -> Action:
    """Answer `{"echo": <the request's JSON body>}`: each answer tells whose request it was."""

    async def act(conn: Connection, req: Request) -> None:
        await conn.write(response(status, b'{"echo":' + (req.body or b"null") + b"}"))

    return act


def send(*parts: bytes, gap_s: float | None = None) -> Action:
    """Write these bytes, each part in its own write (`gap_s` apart: slowly)."""

    async def act(conn: Connection, _: Request) -> None:
        for i, part in enumerate(parts):
            if i and gap_s is not None:
                await asyncio.sleep(gap_s)
            await conn.write(part)

    return act


def flood(first: bytes, block: bytes, max_bytes: int, gap_s: float | None = None) -> Action:
    """Write `first`, then `block` again and again (as fast as the peer reads, or `gap_s`
    apart) until the peer closes or `max_bytes` went out; then wait for the peer to close."""

    async def act(conn: Connection, req: Request) -> None:
        await conn.write(first)
        sent = len(first)
        while sent < max_bytes and not conn.writer.is_closing():
            await conn.write(block)
            sent += len(block)
            if gap_s is not None:
                await asyncio.sleep(gap_s)
        await hang()(conn, req)

    return act


def wait(event: asyncio.Event) -> Action:
    async def act(conn: Connection, _: Request) -> None:
        await event.wait()

    return act


def signal(event: asyncio.Event) -> Action:
    """Set `event` (e.g. to tell the test that the actions before it are done)."""

    async def act(conn: Connection, _: Request) -> None:
        event.set()

    return act


def close() -> Action:
    async def act(conn: Connection, _: Request) -> None:
        conn.ended = True

    return act


def reset() -> Action:
    """Close with a TCP reset (SO_LINGER 0) instead of a FIN."""

    async def act(conn: Connection, _: Request) -> None:
        sock = conn.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.ended = True

    return act


def hang() -> Action:
    """Never answer: read (and drop) until the peer closes."""

    async def act(conn: Connection, _: Request) -> None:
        while await conn.reader.read(65536):
            pass
        conn.peer_closed = conn.ended = True

    return act


class Misbehaving:
    def __init__(self, sock: socket.socket | None = None) -> None:
        self._sock = sock  # a listening socket to serve on (default: a new one, port 0)
        self.plans: deque[Plan] = deque()
        self.default: Plan = [echo()]
        self.connections: list[Connection] = []
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Misbehaving:
        where: dict[str, Any] = {"sock": self._sock} if self._sock else {"host": "127.0.0.1"}
        self._server = await asyncio.start_server(self._serve, **where)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop listening and end every connection (also to free the port for a test)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[Request]:
        """Every request that took a plan (control calls left out), in arrival order per
        connection, connections in accept order."""
        return [r for c in self.connections for r in c.requests if r.path not in CONTROL]

    def open_connections(self) -> list[Connection]:
        return [c for c in self.connections if not c.closed.is_set()]

    def connection_of(self, req: Request) -> Connection:
        return next(c for c in self.connections if any(r is req for r in c.requests))

    async def until(self, predicate: Callable[[], bool], timeout_s: float = 10) -> None:
        """Wait until `predicate()` holds (checked at each request and connection change)."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(predicate)

    async def _changed_now(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        conn = Connection(len(self.connections), reader, writer)
        self.connections.append(conn)
        await self._changed_now()
        try:
            while True:
                req = await _read_request(reader)
                if req is None:
                    conn.peer_closed = True
                    break
                conn.requests.append(req)
                await self._changed_now()
                for action in self._plan_for(req):
                    await action(conn, req)
                    if conn.ended:
                        break
                if conn.ended:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            conn.peer_closed = True
        finally:
            writer.close()
            conn.closed.set()
            self._tasks.discard(asyncio.current_task())
            await asyncio.shield(self._changed_now())

    def _plan_for(self, req: Request) -> Plan:
        if req.path in CONTROL:
            close_after = (req.header(b"connection") or b"").lower() == b"close"
            answer = send(response(200, CONTROL[req.path]))
            return [answer, close()] if close_after else [answer]
        return self.plans.popleft() if self.plans else self.default


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request (Content-Length or chunked body), or None at a clean EOF."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    line, *lines = raw[:-4].split(b"\r\n")
    method, target, _ = line.split(b" ", 2)
    headers = [(k.strip(), v.strip()) for k, _, v in (h.partition(b":") for h in lines)]
    req = Request(method, target, headers, b"")
    if (req.header(b"transfer-encoding") or b"").lower() == b"chunked":
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append((await reader.readexactly(size + 2))[:-2])
        await reader.readuntil(b"\r\n")  # no trailers from the proxy
        req.body = b"".join(parts)
    elif length := int(req.header(b"content-length") or 0):
        req.body = await reader.readexactly(length)
    return req
