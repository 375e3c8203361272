"""The proxy's upstream transport (its own keep-alive pool under httpx, responses parsed by
llhttp in `proxy/upstream/http1.py`) fails the way httpx's own does, frames bodies as HTTP/1.1 says,
reuses a connection only when that is safe (never after a stray byte, trailing bytes or EOF),
never sends a POST twice, and bounds the wait for a response head."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from proxy.upstream.transport import UpstreamTransport, upstream_transport
from tests.helpers.processes import free_port

pytestmark = pytest.mark.process  # the upstream client against loopback servers

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
LIMITS = httpx.Limits(max_keepalive_connections=8, keepalive_expiry=30)
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


@asynccontextmanager
async def server(handle: Handler) -> AsyncIterator[str]:
    """A raw TCP backend; on exit every connection's handler is stopped and its socket closed
    (a handler still waiting for the client must not outlive the test's event loop)."""
    handlers: set[asyncio.Task[None]] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await handle(reader, writer)
        finally:
            writer.close()

    srv = await asyncio.start_server(tracked, "127.0.0.1", 0)
    async with srv:
        yield f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    for task in handlers:
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)


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


def answering(*responses: bytes, close: bool = False) -> tuple[Handler, list[int]]:
    """A backend that answers each request on a connection with the next canned response,
    written one byte at a time (so every parser state meets a buffer boundary)."""
    seen: list[int] = []  # requests per connection

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(0)
        try:
            for response in responses[len(seen) - 1 :] if close else responses:
                await reader.readuntil(b"\r\n\r\n")
                seen[-1] += 1
                for i in range(len(response)):
                    writer.write(response[i : i + 1])
                    await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection (it may refuse a response half-way)
        finally:
            writer.close()

    return handle, seen


async def test_chunked_body_with_extensions_and_trailers_is_decoded_and_reused() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-trailer: t\r\n\r\n"
    )
    handle, seen = answering(chunked, chunked)
    async with server(handle) as url, client() as c:
        texts = [(await c.get(url)).text, (await c.get(url)).text]
    assert texts == ["hello world", "hello world"]
    assert seen == [2], "a complete chunked response leaves the connection reusable"


async def test_interim_response_is_skipped_and_length_framing_is_kept() -> None:
    handle, seen = answering(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond",
    )
    async with server(handle) as url, client() as c:
        got = [await c.get(url) for _ in range(3)]
    assert [(r.status_code, r.text) for r in got] == [(200, "first"), (204, ""), (200, "second")]
    assert seen == [3]


async def test_body_without_length_runs_until_the_backend_closes() -> None:
    response = b"HTTP/1.1 200 OK\r\n\r\nuntil close"
    handle, seen = answering(response, response, close=True)
    async with server(handle) as url, client() as c:
        texts = [(await c.get(url)).text, (await c.get(url)).text]
    assert texts == ["until close", "until close"]
    assert seen == [1, 1]


@pytest.mark.parametrize(
    ("response", "headers"),
    [
        (b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok", {}),
        (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", {}),
        (OK + b"X", {}),  # a byte after the response: the connection is out of step
        (OK, {"connection": "close"}),  # the proxy's own request asked for it
    ],
)
async def test_connection_that_must_close_is_not_reused(
    response: bytes, headers: dict[str, str]
) -> None:
    handle, seen = answering(response, response)  # the backend would take a second request
    async with server(handle) as url, client() as c:
        texts = [(await c.get(url, headers=headers)).text for _ in range(2)]
    assert texts == ["ok", "ok"]
    assert seen == [1, 1], "each request on a connection of its own"


def scripted(*connections: list[str]) -> tuple[Handler, list[int]]:
    """A backend whose n-th connection plays the n-th script: per request `ok` (answer),
    `hangup` (read it, close without a byte) or `partial` (half a status line, then close)."""
    requests: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(0)
        for step in connections[len(requests) - 1]:
            await reader.readuntil(b"\r\n\r\n")
            requests[-1] += 1
            if step != "ok":
                writer.write(b"HTTP/1.1 2" if step == "partial" else b"")
                await writer.drain()
                return  # (server() closes the socket)
            writer.write(OK)
            await writer.drain()
        await reader.read()

    return handle, requests


async def test_reused_connection_closed_without_a_byte_is_retried_once_on_a_new_one() -> None:
    handle, requests = scripted(["ok", "hangup"], ["ok"])
    async with server(handle) as url, client() as c:
        texts = [(await c.get(url)).text for _ in range(2)]
    assert texts == ["ok", "ok"]
    assert requests == [2, 1]


async def test_a_post_is_never_sent_twice_even_on_a_reused_connection() -> None:
    """The backend read it and closed without a byte back: it may be generating already."""
    handle, requests = scripted(["ok", "hangup"], ["ok"])
    async with server(handle) as url, client() as c:
        assert (await c.post(url, content=b"{}")).text == "ok"
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await c.post(url, content=b"{}")
    assert requests == [2]


async def test_a_stray_response_on_an_idle_connection_is_never_read_as_an_answer() -> None:
    answered, sent = asyncio.Event(), asyncio.Event()
    connections = 0

    async def stray_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(OK)
            await writer.drain()
            if connections == 1:  # then, on the idle connection, an answer nobody asked for
                await answered.wait()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray")
                await writer.drain()
                sent.set()

    async with server(stray_once) as url, client() as c:
        assert (await c.get(url)).text == "ok"
        answered.set()
        async with asyncio.timeout(5):
            await sent.wait()
        assert [(await c.get(url)).text for _ in range(2)] == ["ok", "ok"]
    assert connections == 2


async def test_endless_interim_responses_end_at_the_read_timeout() -> None:
    """`read` bounds the whole response head, 1xx heads included, not each read."""

    async def continues(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        while True:  # until the client gives up (then a write fails or the server() exits)
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.02)

    async with server(continues) as url, client(timeout=0.3) as c:
        async with asyncio.timeout(10):
            with pytest.raises(httpx.ReadTimeout):
                await c.get(url)


@pytest.mark.parametrize(
    ("scripts", "seen"),
    [
        ((["hangup"],), [1]),  # a new connection: nothing to blame on staleness
        ((["ok", "partial"],), [2]),  # bytes came back: the backend had the request
    ],
)
async def test_no_retry_on_a_new_connection_or_after_a_byte(
    scripts: tuple[list[str], ...], seen: list[int]
) -> None:
    handle, requests = scripted(*scripts, ["ok"])
    async with server(handle) as url, client() as c:
        for _ in range(len(scripts[0]) - 1):
            await c.get(url)
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get(url)
    assert requests == seen


async def test_expired_idle_connection_is_not_reused() -> None:
    handle, seen = answering(OK, OK)
    limits = httpx.Limits(max_keepalive_connections=8, keepalive_expiry=0)
    async with (
        server(handle) as url,
        httpx.AsyncClient(transport=upstream_transport(limits)) as c,
    ):
        await c.get(url)
        await c.get(url)
    assert seen == [1, 1]


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 2OO OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n folded: header\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",  # then the backend closes
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",  # framed both ways (RFC 9112 6.3: a smuggling signal)
        b"HTTP/1.1 099 Odd\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.7 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nx-a: foo\nset-cookie: evil=1\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 204 No Content\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"x-big: %s\r\n" % (b"v" * 70_000) + b"content-length: 0\r\n\r\n",
    ],
)
async def test_malformed_or_truncated_response_is_a_protocol_error(response: bytes) -> None:
    handle, _ = answering(response, close=True)
    async with server(handle) as url, client() as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get(url)


async def test_response_closed_before_its_end_closes_the_connection() -> None:
    eof = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await reader.read()  # returns at EOF: the client closed its end
        eof.set()
        writer.close()

    async with server(endless) as url, client() as c:
        async with c.stream("GET", url) as r:
            async for chunk in r.aiter_raw():
                assert chunk == b"first"
                break
        async with asyncio.timeout(10):
            await eof.wait()  # the backend sees the close (vLLM then aborts the request)


async def test_header_that_would_split_the_request_is_refused() -> None:
    handle, seen = answering(OK)
    async with server(handle) as url, client() as c:
        with pytest.raises(httpx.LocalProtocolError):
            await c.get(url, headers={"x-evil": "a\r\nx-injected: 1"})
    assert seen in ([], [0])


async def test_chunks_that_arrived_together_are_handed_on_together() -> None:
    """A backend's burst (vLLM leaves Nagle on) is one write onwards, not one per event."""
    events = [b"data: %d\n\n" % i for i in range(3)]
    burst = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)

    async def bursty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + burst)
        await writer.drain()
        await reader.read()  # until the client is done

    async with server(bursty) as url, client() as c, c.stream("GET", url) as r:
        pieces = []
        async for piece in r.aiter_raw():
            pieces.append(piece)
            if b"".join(pieces) == b"".join(events):
                break
    assert pieces == [b"".join(events)]


async def test_expired_connections_of_an_idle_backend_do_not_hold_the_shared_budget() -> None:
    """After a switch, connections to the model nobody asks for any more are closed once they
    expire, even though only the other backend gets requests."""
    closed_by_client = asyncio.Event()

    async def first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        await writer.drain()
        await reader.read()  # returns at the proxy's FIN
        closed_by_client.set()

    second, _ = answering(OK)
    now = [0.0]
    limits = httpx.Limits(max_keepalive_connections=1, keepalive_expiry=4)
    transport = UpstreamTransport(limits, clock=lambda: now[0])
    async with (
        server(first) as a,
        server(second) as b,
        httpx.AsyncClient(transport=transport) as c,
    ):
        await c.get(a)  # its connection goes idle: the one idle slot
        now[0] += 5  # ... and expires
        await c.get(b)  # handing b's connection back sweeps a's
        async with asyncio.timeout(10):
            await closed_by_client.wait()


async def until(condition: Callable[[], bool], deadline_s: float = 5) -> None:
    async with asyncio.timeout(deadline_s):
        while not condition():
            await asyncio.sleep(0.001)  # (polls a condition that the event loop's reads set)


async def test_a_big_answer_left_unread_leaves_a_connection_that_reads_again() -> None:
    """Reading pauses while more than 256 KiB wait for the caller; a caller that leaves such
    an answer complete but untaken must not pool a connection that never reads again."""
    big = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (300 * 1024) + b"x" * (300 * 1024)
    connections = 0

    async def two(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        for answer in (big, OK):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        await reader.read()

    async with server(two) as url, client(timeout=2) as c:
        r = await c.send(c.build_request("GET", url), stream=True)
        conn = r.stream._stream._conn  # type: ignore[union-attr]  # (httpx wraps our _Body)
        await until(lambda: conn.finished)  # all of it arrived, none of it taken
        await r.aclose()
        second = await c.get(url)
    assert second.text == "ok"
    assert connections == 1, "the connection went back to the pool, and read the next answer"


async def test_an_endless_trailer_is_refused_in_bounded_memory() -> None:
    """llhttp keeps an unfinished trailer value in memory: bytes that bring no body are bounded
    like a head (here 64 KiB), even while they keep coming (so no read timeout ends it)."""

    async def trailer_flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-t: ")
        try:
            for _ in range(64):  # 4 MiB of one trailer value at most
                writer.write(b"v" * 65536)
                await writer.drain()
        except ConnectionError:
            return  # refused: the client closed

    async with server(trailer_flood) as url, client() as c, c.stream("GET", url) as r:
        with pytest.raises(httpx.RemoteProtocolError, match="trailers without body"):
            await r.aread()
