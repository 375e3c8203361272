"""The proxy's upstream edge end to end, against a misbehaving backend
(tests/helpers/misbehaving.py): the proxy under uvicorn in the test's loop, real sockets on
loopback.

No answer ever reaches the wrong client; every malformed response is a clean 502 (mid-stream:
an SSE error event and `[DONE]`) with the proxy healthy and the bad connection closed; bodies
are handed on as they arrive in bounded memory; each model's own read/connect timeouts hold;
a POST is never sent twice. Answers are told apart by the `marker` each request carries, which
the backend echoes.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from proxy.config import ProxyConfig
from tests.helpers.misbehaving import (
    Misbehaving,
    Plan,
    close,
    echo,
    flood,
    hang,
    reset,
    response,
    send,
    signal,
    wait,
)
from tests.helpers.proxy_server import serve_proxy

pytestmark = pytest.mark.process  # the proxy under uvicorn before a misbehaving loopback backend

MIB = 1 << 20
CHAT = "/v1/chat/completions"


@pytest.fixture
async def backend() -> AsyncIterator[Misbehaving]:
    async with Misbehaving() as b:
        yield b


def config(url: str, *models: dict[str, Any]) -> ProxyConfig:
    """Models (default: one, `m`) at `url`, each on a GPU group of its own (all stay READY)."""
    specs = models or ({"name": "m"},)
    full = [{"url": url, "gpu": f"g{i}", **m} for i, m in enumerate(specs)]
    gpus = [{"name": f"g{i}"} for i in range(len(full))]
    return ProxyConfig.model_validate({"models": full, "gpus": gpus})


@asynccontextmanager
async def proxied(url: str, *models: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serve_proxy(config(url, *models)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as client,
    ):
        for name in [m["name"] for m in models] or ["m"]:
            assert proxy.state(name) == "ready"
        yield client


async def ask(client: httpx.AsyncClient, marker: object, model: str = "m") -> httpx.Response:
    return await client.post(CHAT, json={"model": model, "marker": marker})


def marker(r: httpx.Response) -> object:
    assert r.status_code == 200, r.text
    return r.json()["echo"]["marker"]


def assert_proxy_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert r.headers["x-vllm-switch-error"] == code


async def test_an_unsolicited_response_on_an_idle_connection_reaches_nobody(
    backend: Misbehaving,
) -> None:
    idle, sent = asyncio.Event(), asyncio.Event()
    stray = response(200, b'{"echo":{"marker":"stray"}}')
    backend.plans.append([echo(), wait(idle), send(stray), signal(sent)])
    async with proxied(backend.url) as client:
        assert marker(await ask(client, 0)) == 0
        conn = backend.connection_of(backend.requests[0])
        idle.set()  # the stray answer goes out on the now idle pooled connection
        async with asyncio.timeout(5):
            await sent.wait()  # (on loopback it is in the proxy's socket once sent)
        answers = [marker(await ask(client, i)) for i in range(1, 5)]
        assert answers == [1, 2, 3, 4]
        await backend.until(conn.closed.is_set, 5)
    assert conn.peer_closed, "the proxy closed the connection that got a stray response"


CL_OK = b"content-length: 2\r\n\r\nok"
MALFORMED = {
    "status 099": b"HTTP/1.1 099 Odd\r\n" + CL_OK,
    "status 999": b"HTTP/1.1 999 Odd\r\n" + CL_OK,
    "bare LF in a value": b"HTTP/1.1 200 OK\r\nx-a: foo\nset-cookie: evil=1\r\n" + CL_OK,
    "bare CR in a value": b"HTTP/1.1 200 OK\r\nx-a: foo\rset-cookie: evil=1\r\n" + CL_OK,
    "space in a name": b"HTTP/1.1 200 OK\r\nx a: b\r\n" + CL_OK,
    "NUL in a value": b"HTTP/1.1 200 OK\r\nx-a: fo\x00o\r\n" + CL_OK,
    "HTTP/1.7": b"HTTP/1.7 200 OK\r\n" + CL_OK,
    "204 with a body": b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\nhello",
    "CL and chunked": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n"
    b"\r\n2\r\nok\r\n0\r\n\r\n",
    "gzip, chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
    b"2\r\nok\r\n0\r\n\r\n",
    "obs-fold": b"HTTP/1.1 200 OK\r\nx-a: b\r\n folded\r\n" + CL_OK,
    "garbage": b"\x16\x03\x01\x02\x00garbage\r\n\r\n",
    "chunk size not hex": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    b"zz\r\nok\r\n0\r\n\r\n",
    "head over 64 KiB": b"HTTP/1.1 200 OK\r\n"
    + b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 1000) for i in range(70))
    + CL_OK,
    "101 Switching Protocols": b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
    b"connection: upgrade\r\n\r\n",
}


@pytest.mark.parametrize(
    "plan",
    [pytest.param([send(raw)], id=name) for name, raw in MALFORMED.items()]
    + [pytest.param([send(b"HTTP/1.1 200 OK\r\ncontent-le"), close()], id="truncated head")],
)
async def test_a_malformed_response_is_a_502_and_the_proxy_stays_healthy(
    backend: Misbehaving, plan: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    backend.plans.append(plan)
    async with proxied(backend.url, {"name": "m", "timeouts": {"read_s": 5}}) as client:
        r = await ask(client, 0)
        assert_proxy_error(r, 502, "upstream_unreachable")
        logged = [rec.getMessage() for rec in caplog.records if rec.levelname == "WARNING"]
        reason = r.json()["error"]["message"].split(": ", 1)[1]  # after "backend of 'm' ..."
        assert any(reason in line for line in logged), (reason, logged)
        bad = backend.connection_of(backend.requests[0])
        await backend.until(bad.closed.is_set, 5)  # not pooled, not leaked
        assert marker(await ask(client, 1)) == 1
        good = backend.connection_of(backend.requests[1])
        assert good is not bad
        assert backend.open_connections() == [good]  # (idle in the pool)


async def test_trailer_fields_never_reach_the_client_as_headers(backend: Misbehaving) -> None:
    """In one read with the head: a trailer must not join the header list (RFC 9110 6.5)."""
    chunked = b"transfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nset-cookie: evil=1\r\n\r\n"
    backend.plans.append([send(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + chunked)])
    async with proxied(backend.url) as client:
        r = await ask(client, 0)
    assert (r.status_code, r.text) == (200, "{}")
    assert "set-cookie" not in r.headers


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
EVENTS = [b'data: {"n": %d}\n\n' % i for i in range(3)]


def sse_data(stream: bytes) -> list[bytes]:
    """The `data` of each event, as an SSE client parses it (lines of other fields ignored)."""
    events: list[bytes] = []
    data: list[bytes] = []
    for line in stream.split(b"\n"):
        if not line and data:
            events.append(b"\n".join(data))
            data = []
        elif line.startswith(b"data:"):
            data.append(line[5:].removeprefix(b" "))
    return events


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param([send(b"zz\r\n")], id="chunk size not hex"),
        pytest.param([send(b"5\r\nhelloXX")], id="chunk data not ended by CRLF"),
        pytest.param([send(b"5;a\x00b\r\nhello\r\n")], id="NUL in a chunk extension"),
        pytest.param([close()], id="closed between chunks"),
        pytest.param([send(b"10\r\nabc"), close()], id="closed inside a chunk"),
    ],
)
async def test_a_stream_that_goes_bad_ends_with_an_sse_error_and_done(
    backend: Misbehaving, bad: list[Any]
) -> None:
    delivered = asyncio.Event()
    first = SSE_HEAD + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in EVENTS)
    backend.plans.append([send(first), wait(delivered), *bad])
    async with (
        proxied(backend.url) as client,
        client.stream("POST", CHAT, json={"model": "m", "stream": True}) as r,
    ):
        assert r.status_code == 200
        got = b""
        async with asyncio.timeout(10):
            async for piece in r.aiter_raw():
                got += piece
                if got == b"".join(EVENTS):
                    delivered.set()  # the backend goes bad only once the client has these
    *events, error, done = sse_data(got)
    assert events == sse_data(b"".join(EVENTS))
    assert json.loads(error)["error"]["code"] == "upstream_unreachable"
    assert done == b"[DONE]"


JSON_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
ERROR_HEAD = b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n"
PARTIAL = b'content-length: 40\r\n\r\n{"partial":'
BREAKS: dict[str, tuple[Callable[[bytes], Plan], int, str]] = {  # break -> what the client gets
    "cut short": (lambda head: [send(head + PARTIAL), close()], 502, "upstream_unreachable"),
    "bad chunk after a good one": (
        lambda head: [send(head + b"transfer-encoding: chunked\r\n\r\n2\r\n{}\r\nzz\r\n")],
        502,
        "upstream_unreachable",
    ),
    "stalls past read_s": (lambda head: [send(head + PARTIAL), hang()], 504, "upstream_timeout"),
}


@pytest.mark.parametrize("head", [JSON_HEAD, ERROR_HEAD], ids=["an answer", "an error answer"])
@pytest.mark.parametrize("broken", list(BREAKS))
async def test_a_body_that_breaks_is_a_clean_error_not_a_cut_connection(
    backend: Misbehaving, head: bytes, broken: str
) -> None:
    """A non-streamed answer is held until complete (and a backend's error answer is read
    whole to be passed on), so a body the backend breaks after a good head still gets the
    client a whole OpenAI error: not a reset mid-body, not a 500."""
    plan, status, code = BREAKS[broken]
    backend.plans.append(plan(head))
    async with proxied(backend.url, {"name": "m", "timeouts": {"read_s": 0.5}}) as client:
        r = await ask(client, 0)
        assert_proxy_error(r, status, code)
        if head is JSON_HEAD:  # (the proxy's headers came with the answer's head)
            assert r.headers["x-vllm-switch-model"] == "m"
        assert marker(await ask(client, 1)) == 1


async def test_a_stream_sent_with_a_content_length_still_gets_its_error_event(
    backend: Misbehaving,
) -> None:
    """A stream is never forwarded with the backend's Content-Length: the error event that
    ends a broken stream must fit after what came."""
    event = b'data: {"x":1}\n\n'
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 100\r\n\r\n"
    backend.plans.append([send(head + event), close()])
    async with (
        proxied(backend.url) as client,
        client.stream("POST", CHAT, json={"model": "m", "stream": True}) as r,
    ):
        assert "content-length" not in r.headers
        got = b"".join([piece async for piece in r.aiter_raw()])
    *events, error, done = sse_data(got)
    assert events == [b'{"x":1}']
    assert json.loads(error)["error"]["code"] == "upstream_unreachable"
    assert done == b"[DONE]"


async def test_a_large_answer_whose_body_breaks_cuts_the_client_connection(
    backend: Misbehaving,
) -> None:
    """Past the 1 MiB held back, the head is gone: a broken body aborts the client connection,
    so a truncated body never looks complete."""
    head = JSON_HEAD + b"content-length: %d\r\n\r\n" % (4 * MIB)
    backend.plans.append([send(head, b"x" * (2 * MIB)), close()])
    async with proxied(backend.url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await ask(client, 0)
        assert marker(await ask(client, 1)) == 1


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmRSS:"))
    return int(kib) * 1024


async def test_a_1_gib_chunk_is_handed_on_as_it_arrives_in_bounded_memory(
    backend: Misbehaving,
) -> None:
    """The proxy runs in this process: its memory is this process's RSS."""
    streamed = 128 * MIB
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
        b"transfer-encoding: chunked\r\n\r\n40000000\r\n"  # one chunk of 1 GiB
    )
    backend.plans.append([flood(head, b"x" * MIB, max_bytes=streamed + 64 * MIB)])
    async with proxied(backend.url) as client:
        before = rss_bytes()
        began = time.monotonic()
        async with client.stream("POST", CHAT, json={"model": "m"}) as r:
            assert r.status_code == 200
            pieces, got, peak = r.aiter_raw(), 0, before
            async with asyncio.timeout(10):
                while got < MIB:
                    got += len(await anext(pieces))
            first_mib_s = time.monotonic() - began
            async with asyncio.timeout(60):
                while got < streamed:
                    got += len(await anext(pieces))
                    peak = max(peak, rss_bytes())
        # leaving the stream cancels it: the proxy closes the backend's connection
        bad = backend.connection_of(backend.requests[0])
        await backend.until(bad.closed.is_set, 10)
    assert first_mib_s < 1.0, f"the first MiB took {first_mib_s:.2f}s"
    growth = peak - before
    assert growth < 64 * MIB, f"RSS grew {growth / MIB:.0f} MiB over {streamed // MIB} MiB"


async def test_partial_chunk_data_is_handed_on_before_the_chunk_is_complete(
    backend: Misbehaving,
) -> None:
    half = asyncio.Event()
    data = bytes(range(256)) * 4096  # one chunk of 1 MiB, sent in 64 KiB pieces
    pieces = [data[i : i + 65536] for i in range(0, MIB, 65536)]
    head = (  # a stream (an answer that is not one is held back up to 1 MiB on purpose)
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n\r\n100000\r\n"
    )
    backend.plans.append([send(head, *pieces[:8]), wait(half), send(*pieces[8:], b"\r\n0\r\n\r\n")])
    async with (
        proxied(backend.url) as client,
        client.stream("POST", CHAT, json={"model": "m"}) as r,
    ):
        got, body = b"", r.aiter_raw()
        async with asyncio.timeout(5):
            while len(got) < MIB // 2:  # only half the chunk was sent so far
                got += await anext(body)
        half.set()
        async with asyncio.timeout(10):
            async for piece in body:
                got += piece
    assert got == data


async def test_each_model_has_its_own_read_timeout(backend: Misbehaving) -> None:
    """Two models (one backend each: one engine serves one model) on the proxy's one pool."""
    release = asyncio.Event()
    backend.plans.append([wait(release), echo()])  # the patient model's request
    async with Misbehaving() as other:
        other.plans.append([hang()])  # the impatient model's: never answered
        patient = {"name": "patient", "url": backend.url, "timeouts": {"read_s": 30}}
        impatient = {"name": "impatient", "url": other.url, "timeouts": {"read_s": 0.5}}
        async with proxied(backend.url, patient, impatient) as client:
            slow = asyncio.create_task(ask(client, "p", "patient"))
            await backend.until(lambda: len(backend.requests) == 1)
            began = time.monotonic()
            async with asyncio.timeout(10):
                assert_proxy_error(await ask(client, "i", "impatient"), 504, "upstream_timeout")
            assert time.monotonic() - began < 5
            assert not slow.done(), "the patient model's request was cut with the other's timeout"
            release.set()
            assert marker(await slow) == "p"


def _unaccepting(port: int) -> tuple[socket.socket, list[socket.socket]]:
    """A listener on `port` whose accept queue (of one) is full: later SYNs are dropped."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(0)
    fillers = [socket.socket() for _ in range(4)]
    for f in fillers:
        f.setblocking(False)
        f.connect_ex(("127.0.0.1", port))
    return listener, fillers


async def test_each_model_has_its_own_connect_timeout(backend: Misbehaving) -> None:
    """The first model's connect_s (30) is not everybody's: the second's (0.5) holds."""
    async with Misbehaving() as other:
        patient = {"name": "patient", "url": backend.url, "timeouts": {"connect_s": 30}}
        impatient = {"name": "impatient", "url": other.url, "timeouts": {"connect_s": 0.5}}
        async with proxied(backend.url, patient, impatient) as client:
            ports = (backend.port, other.port)
            await backend.stop()  # no idle connection is left to reuse (control calls close)
            await other.stop()
            (listener, fillers), (other_listener, other_fillers) = map(_unaccepting, ports)
            try:
                slow = asyncio.create_task(ask(client, "p", "patient"))
                began = time.monotonic()
                async with asyncio.timeout(10):
                    assert_proxy_error(await ask(client, "i", "impatient"), 504, "upstream_timeout")
                assert time.monotonic() - began < 5
                assert not slow.done()
                async with Misbehaving(listener) as again:  # the retransmitted SYN gets in
                    assert marker(await slow) == "p"
                    assert [r.json() for r in again.requests] == [
                        {"model": "patient", "marker": "p"}
                    ]
            finally:
                for f in (*fillers, *other_fillers):
                    f.close()
                other_listener.close()


@pytest.mark.parametrize(
    ("gap_s", "status", "code"),
    [(None, 502, "upstream_unreachable"), (0.05, 504, "upstream_timeout")],
    ids=["flood", "one every 50 ms"],
)
async def test_endless_interim_responses_end_the_request(
    backend: Misbehaving, gap_s: float | None, status: int, code: str
) -> None:
    """A flood of interim heads is refused once they pass the head size limit (502); a trickle
    ends when read_s, which covers the whole head with its interim heads, runs out (504)."""
    block = b"HTTP/1.1 100 Continue\r\n\r\n" * (64 if gap_s is None else 1)
    backend.plans.append([flood(b"", block, max_bytes=1 << 40, gap_s=gap_s)])
    async with proxied(backend.url, {"name": "m", "timeouts": {"read_s": 1}}) as client:
        async with asyncio.timeout(10):
            r = await ask(client, 0)
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code
        conn = backend.connection_of(backend.requests[0])
        await backend.until(conn.closed.is_set, 5)
        assert marker(await ask(client, 1)) == 1


@pytest.mark.parametrize("reused", [True, False], ids=["reused", "new"])
@pytest.mark.parametrize("ending", [close, reset])
async def test_a_post_the_backend_read_is_never_sent_again(
    backend: Misbehaving, reused: bool, ending: Any
) -> None:
    """The backend reads the request and closes (FIN or reset) without a byte back: 502, and
    the backend got it once - also on a reused connection, where the old transport retried."""
    if reused:
        backend.plans.append([echo()])
    backend.plans.append([ending()])
    async with proxied(backend.url) as client:
        if reused:
            assert marker(await ask(client, 0)) == 0
        assert_proxy_error(await ask(client, 1), 502, "upstream_unreachable")
        markers = [r.json()["marker"] for r in backend.requests]
        assert markers == ([0] if reused else []) + [1]
        if reused:
            assert len({id(backend.connection_of(r)) for r in backend.requests}) == 1


async def test_an_idle_connection_the_backend_closed_is_not_used(backend: Misbehaving) -> None:
    backend.plans.append([echo(), close()])  # keep-alive promised, then closed while idle
    async with proxied(backend.url) as client:
        assert marker(await ask(client, 0)) == 0
        await backend.until(backend.connection_of(backend.requests[0]).closed.is_set)
        assert marker(await ask(client, 1)) == 1
        assert [r.json()["marker"] for r in backend.requests] == [0, 1]
