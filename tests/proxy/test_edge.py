"""The inbound edge (proxy/http/edge/protocol.py, proxy/http/edge/fdlimit.py) over real loopback sockets: deadlines,
caps and early rejections answered in OpenAI JSON, and the proxy up under idle-connection floods.

The backend of these proxies is a closed port: /health answers regardless (it is liveness)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import re
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import uvloop
import yaml
from uvicorn.protocols.http import httptools_impl

from proxy.app import create_app
from proxy.cli import uvicorn_config
from proxy.config import ProxyConfig
from proxy.http.edge.fdlimit import AcceptErrorHandler, RateLimitedLog, connection_cap
from proxy.http.edge.protocol import UVICORN_ATTRIBUTES, EdgeProtocol
from tests.processes import free_port
from tests.proxy.conftest import serve_proxy

HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
HEALTH_CLOSE = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def edge_config(**limits: Any) -> ProxyConfig:
    url = f"http://127.0.0.1:{free_port()}"
    return ProxyConfig.model_validate({"models": [{"name": "m", "url": url}], "limits": limits})


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def openai_error(raw: bytes, status: int, code: str) -> dict[str, Any]:
    """The one response in `raw`: `status`, an OpenAI error body with `code`, Connection: close."""
    got, headers, body = parse(raw)
    assert got == status, raw[:300]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body), "exactly one response, then EOF"
    error: dict[str, Any] = json.loads(body)["error"]
    assert error["code"] == code
    assert error["type"] in ("invalid_request_error", "server_error")
    return error


async def until_closed(port: int, *chunks: bytes, deadline_s: float = 10) -> bytes:
    """Connect, send `chunks`, return all the server sends until it closes (within the deadline)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        async with asyncio.timeout(deadline_s):
            return await reader.read()  # to EOF
    finally:
        await closed(writer)


async def closed(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def test_request_head_deadline_from_connect_and_from_a_keepalive_requests_first_byte() -> (
    None
):
    async with serve_proxy(edge_config(head_timeout_s=0.5), reconciled=False) as proxy:
        port = port_of(proxy.url)
        idle = await until_closed(port)
        partial = await until_closed(port, b"GET /heal")
        keepalive = await until_closed(port, HEALTH, b"GET /heal")
    for raw in (idle, partial):
        assert (
            "no complete request head within 0.5 s"
            in openai_error(raw, 408, "request_timeout")["message"]
        )
    first, _, second = keepalive.partition(b'{"status":"ok"}')
    assert parse(first)[0] == 200, "the complete request is answered"
    openai_error(second, 408, "request_timeout")


async def test_a_stalled_body_gets_408_and_a_steady_one_does_not() -> None:
    async with serve_proxy(edge_config(body_timeout_s=1), reconciled=False) as proxy:
        port = port_of(proxy.url)
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n"
        stalled = await until_closed(port, head, b'{"model"')
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        body = b'{"model": "nope"}   '
        for byte in body[:-1]:  # a byte each 0.1 s: 2 s in all, never a 1 s gap
            writer.write(bytes([byte]))
            await writer.drain()
            with pytest.raises(TimeoutError):  # the pace of a slow client, and no answer yet
                await asyncio.wait_for(reader.read(1), 0.1)
        writer.write(body[-1:])
        async with asyncio.timeout(10):
            steady = await reader.read()
        await closed(writer)
    assert "no byte for 1 s" in openai_error(stalled, 408, "request_timeout")["message"]
    assert parse(steady)[0] == 404, "the whole body arrived and was routed (unknown model)"


async def test_idle_keepalive_connections_are_closed() -> None:
    config = edge_config(keepalive_s=1)
    assert uvicorn_config(create_app(config), config, "warning", grace_s=1).timeout_keep_alive == 1
    async with serve_proxy(config, reconciled=False) as proxy:
        raw = await until_closed(port_of(proxy.url), HEALTH)  # answered, then closed when idle
    assert parse(raw)[0] == 200


async def test_connections_beyond_the_cap_get_a_503_and_are_closed() -> None:
    config = edge_config(max_connections=3, keepalive_s=60, retry_after_s=7)
    async with serve_proxy(config, reconciled=False) as proxy:
        port = port_of(proxy.url)
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        for reader, writer in held:  # each answered once, so each is surely counted
            writer.write(HEALTH)
            async with asyncio.timeout(10):
                assert b"200 OK" in await reader.readuntil(b'{"status":"ok"}')
        refused = await until_closed(port, HEALTH)
        await closed(held[0][1])
        async with asyncio.timeout(10):
            while b"200 OK" not in (again := await until_closed(port, HEALTH_CLOSE)):
                pass  # until the server has seen the close (it answers 503 meanwhile)
        for _, writer in held[1:]:
            await closed(writer)
    error = openai_error(refused, 503, "too_many_connections")
    assert "maximum of 3 connections" in error["message"]
    assert parse(refused)[1]["retry-after"] == "7"
    assert parse(again)[0] == 200


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"GET /\x01 HTTP/1.1\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["method", "header-token", "two-content-lengths", "url-char", "chunk-size"],
)
async def test_framing_errors_get_an_openai_400(request_bytes: bytes) -> None:
    async with serve_proxy(edge_config(), reconciled=False) as proxy:
        raw = await until_closed(port_of(proxy.url), request_bytes)
    assert openai_error(raw, 400, "invalid_request")["message"].startswith("invalid HTTP request: ")


async def test_an_endless_head_gets_431_before_it_is_buffered() -> None:
    """1 MiB of headers that never end: refused at the limit plus the slack, and the client can
    still send all of it and read the answer (the proxy drops input until the client closes)."""
    async with serve_proxy(edge_config(max_header_bytes=4096), reconciled=False) as proxy:
        pad = [b"X-Pad: " + b"p" * 1000 + b"\r\n"] * 1000
        raw = await until_closed(port_of(proxy.url), b"GET /health HTTP/1.1\r\n", *pad)
    assert "the limit is 4096" in openai_error(raw, 431, "headers_too_large")["message"]


async def test_upgrade_is_answered_as_plain_http_and_never_parses_the_rest() -> None:
    async with serve_proxy(edge_config(), reconciled=False) as proxy:
        port = port_of(proxy.url)
        h2c = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        plain = await until_closed(port, h2c + HEALTH)
        smuggled = HEALTH.replace(b"/health", b"/v1/models")
        with_body = (
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: x\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled)
        )
        refused = await until_closed(port, with_body)
    status, headers, body = parse(plain)
    assert (status, headers["connection"], body) == (200, "close", b'{"status":"ok"}')
    assert "upgrade" in openai_error(refused, 400, "invalid_request")["message"]
    assert b'"object":"list"' not in refused, "the body was never run as a request"


def test_what_the_edge_relies_on_in_uvicorn_is_still_there() -> None:
    """proxy/http/edge/protocol.py subclasses uvicorn 0.54's HttpToolsProtocol: if these move, it breaks."""
    protocol_init = inspect.getsource(httptools_impl.HttpToolsProtocol.__init__)
    cycle_init = inspect.getsource(httptools_impl.RequestResponseCycle.__init__)
    for name in UVICORN_ATTRIBUTES["protocol"]:
        assert re.search(rf"self\.{name}\b[^=\n]*=", protocol_init), name
    for name in UVICORN_ATTRIBUTES["protocol_methods"]:
        assert callable(getattr(httptools_impl.HttpToolsProtocol, name)), name
    for name in UVICORN_ATTRIBUTES["cycle"]:
        assert re.search(rf"self\.{name}\b[^=\n]*=", cycle_init), name
    # the body deadline learns that the app waits for more through FlowControl.resume_reading
    assert "self.flow.resume_reading()" in inspect.getsource(
        httptools_impl.RequestResponseCycle.receive
    )
    # uvicorn writes its framing-error answer only through send_400_response
    data_received = inspect.getsource(httptools_impl.HttpToolsProtocol.data_received)
    assert "self.send_400_response(msg)" in data_received
    assert EdgeProtocol.send_400_response is not httptools_impl.HttpToolsProtocol.send_400_response
    config = uvicorn_config(create_app(edge_config()), edge_config(), "warning", grace_s=1)
    config.load()
    assert config.http_protocol_class is EdgeProtocol
    assert not config.proxy_headers, "no X-Forwarded-For rewriting of the client's address"
    new_loop = config.get_loop_factory()
    assert new_loop is not None
    loop = new_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
        assert isinstance(loop.get_exception_handler(), AcceptErrorHandler)
    finally:
        loop.close()


def test_connection_cap_leaves_room_for_an_upstream_connection_each() -> None:
    assert connection_cap(4096, 1024) == 480
    assert connection_cap(4096, 1 << 20) == 4096
    assert connection_cap(100, 1024) == 100


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    code = (
        "import logging, resource; from proxy.http.edge.fdlimit import raise_open_file_limit; "
        "print(*raise_open_file_limit(logging.getLogger()), "
        "resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.split() == ["256", str(hard), str(hard)]


def test_rate_limited_log_counts_what_it_leaves_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("t"), interval_s=10, clock=lambda: now[0])
    for t in (0, 1, 2, 9.9, 10.5, 11, 30):
        now[0] = t
        limited.warning("k", "accept failed")
    limited.warning("other", "another kind")
    assert [r.getMessage() for r in caplog.records] == [
        "accept failed",
        "accept failed (3 more like it since the last such line, 10 s ago)",
        "accept failed (1 more like it since the last such line, 20 s ago)",
        "another kind",
    ]


ACCEPT_STORM = """
import asyncio, logging, resource, sys
from proxy.http.edge.fdlimit import AcceptErrorHandler, RateLimitedLog
logging.basicConfig(level=logging.WARNING, format="%(message)s")
async def main():
    loop = asyncio.get_running_loop()
    AcceptErrorHandler(RateLimitedLog(logging.getLogger("edge"), interval_s=0.5)).install(loop)
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    resource.setrlimit(resource.RLIMIT_NOFILE, (48, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    await asyncio.sleep(3)  # the window in which the loop keeps failing to accept
asyncio.run(main())
"""


def test_accept_errors_are_logged_once_per_interval(tmp_path: Path) -> None:
    """asyncio's loop reports each failed accept() (thousands a second at the fd limit): the
    handler turns that into one line per interval with a count."""
    log = tmp_path / "storm.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", ACCEPT_STORM], stdout=subprocess.PIPE, stderr=err
        )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(200)]
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    for c in clients:
        c.close()
    lines = log.read_text().splitlines()
    counted = [line for line in lines if "more like it" in line]
    assert lines, "the accept errors were reported"
    assert all(line.startswith("cannot accept connections: Too many open files") for line in lines)
    assert len(lines) <= 10, f"{len(lines)} lines in 3 s: not once per 0.5 s"
    assert sum(int(line.split("(")[-1].split()[0]) for line in counted) > 100


@contextmanager
def served(tmp_path: Path, nofile: int | None = None) -> Iterator[tuple[int, Path]]:
    """`vllm-switch serve` in its own process (uvloop, as deployed); yields its port and log."""
    config = {
        "host": "127.0.0.1",
        "port": 0,
        "models": [{"name": "m", "url": f"http://127.0.0.1:{free_port()}"}],
    }
    path, log = tmp_path / "config.yaml", tmp_path / "serve.log"
    path.write_text(yaml.safe_dump(config))

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(path)],
            stdout=subprocess.PIPE,
            stderr=err,
            preexec_fn=limit,
        )
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline().split(b":")[-1]), log
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def enough_descriptors(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    elif hard < needed:
        if os.environ.get("CI"):
            pytest.fail(f"this test needs {needed} open files; the hard limit is {hard}")
        pytest.skip(f"needs {needed} open files; the hard limit is {hard}")


async def probe(client: httpx.AsyncClient, path: str) -> float:
    started = time.monotonic()
    r = await client.get(path)
    assert r.status_code in ((200,) if path == "/health" else (200, 503)), r.text
    assert r.json()
    return time.monotonic() - started


async def test_slowloris_idle_and_slow_header_connections(tmp_path: Path) -> None:
    """The issue's numbers: 1,500 idle + 200 slow-header connections (a header byte a second).
    /health and /ready answer within 1 s while they are held, and the default head deadline
    closes at least 90 % of them within 45 s, each with a 408."""
    enough_descriptors(4096)
    with served(tmp_path) as (port, log):
        started = time.monotonic()
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(1500)]
        slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(200)]

        async def slow_header(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
            head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 100
            for byte in head:
                try:
                    writer.write(bytes([byte]))
                    return await asyncio.wait_for(reader.read(), 1.0)  # a byte a second
                except TimeoutError:
                    continue
                except ConnectionError:
                    return b""
            return b"(never closed)"

        async def until_eof(reader: asyncio.StreamReader) -> bytes:
            try:
                return await reader.read()
            except ConnectionError:
                return b""

        waiting = [asyncio.ensure_future(until_eof(r)) for r, _ in idle]
        waiting += [asyncio.ensure_future(slow_header(r, w)) for r, w in slow]
        limits = httpx.Limits(max_keepalive_connections=0)  # a new connection per probe
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits) as c:
            latencies = []
            while time.monotonic() - started < 10:  # the connections are held ~15 s
                latencies += [await probe(c, "/health"), await probe(c, "/ready")]
                await asyncio.sleep(0.2)  # the probes' own pace
            assert not any(w.done() for w in waiting), "all connections still held"
        done, _ = await asyncio.wait(waiting, timeout=45 - (time.monotonic() - started))
        finished = [t.result() for t in done]
        for _, w in idle + slow:
            await closed(w)
    assert max(latencies) < 1, f"slowest probe {max(latencies):.3f} s"
    assert len(finished) >= 0.9 * 1700, f"{len(finished)} of 1,700 closed within 45 s"
    assert sum(raw.startswith(b"HTTP/1.1 408 ") for raw in finished) >= 0.9 * 1700
    assert log.stat().st_size < 100_000


def read_all(sock: socket.socket) -> bytes:
    """What the server sent until it closed. A connection it refused while 1,100 others lingered
    is closed at once, and the request's unread bytes then make its kernel send a reset, after
    the answer: what came before the reset still counts (Linux delivers it first)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        assert data, "reset before any answer"
    return data


def test_at_the_open_file_limit_new_connections_get_503_and_the_proxy_recovers(
    tmp_path: Path,
) -> None:
    """1,100 idle connections to a proxy under a 1,024 open-file limit (systemd's default):
    it holds (1024 - 64) / 2 = 480, answers each further one 503 in JSON, logs a few lines,
    and serves /health again once they are gone."""
    enough_descriptors(4096)
    with served(tmp_path, nofile=1024) as (port, log):
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(480)]
        more = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(620)]
        answers = [read_all(s) for s in more]
        health = []
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(HEALTH)
                health.append(read_all(s))
        for s in held:
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)  # still held: nothing was sent, the connection is open
        for s in held + more:
            s.close()
        deadline = time.monotonic() + 30
        while True:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(HEALTH_CLOSE)
                if (after := read_all(s)).startswith(b"HTTP/1.1 200 "):
                    break
            assert time.monotonic() < deadline, after
    for raw in answers + health:
        assert "maximum of 480" in openai_error(raw, 503, "too_many_connections")["message"]
        assert parse(raw)[1]["retry-after"] == "5"
    text = log.read_text()
    assert "open-file limit: 1024 (was 1024, hard limit 1024)" in text
    assert "connection cap lowered to 480" in text
    assert log.stat().st_size < 100_000


async def test_an_endless_trailer_section_is_refused_before_it_grows() -> None:
    """llhttp keeps an unfinished trailer value in memory: bytes that bring no body are
    bounded like a head (431), whatever the body deadline."""
    config = edge_config(max_header_bytes=4096, body_timeout_s=60)
    async with serve_proxy(config, reconciled=False) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(proxy.url))
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n2\r\n{}\r\n0\r\nx-t: "
        )
        with contextlib.suppress(ConnectionError):  # 1 MiB of one trailer value, never ended
            for _ in range(16):
                writer.write(b"v" * 65536)
                await writer.drain()
        async with asyncio.timeout(10):  # (without the bound: no answer until body_timeout_s)
            raw = await reader.read()
        await closed(writer)
    openai_error(raw, 431, "headers_too_large")


async def test_no_408_follows_an_answer_given_before_the_body_came() -> None:
    """The key check answers 401 without reading the body; the client then stalls: the
    connection is closed, with no second, unasked-for response on it."""
    url = f"http://127.0.0.1:{free_port()}"
    config = ProxyConfig.model_validate(
        {
            "models": [{"name": "m", "url": url}],
            "limits": {"body_timeout_s": 0.5},
            "auth": {"api_keys": ["k" * 8]},
        }
    )
    async with serve_proxy(config, reconciled=False) as proxy:
        raw = await until_closed(
            port_of(proxy.url),
            b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"mo',
        )
    status, headers, body = parse(raw)
    assert status == 401
    assert len(body) == int(headers["content-length"]), "one response, then EOF: no 408 after it"


async def test_a_pipelined_head_does_not_cut_the_response_before_it() -> None:
    """The next request's first bytes arrive while a slow response streams: its head deadline
    runs only once that response is out."""
    release = asyncio.Event()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await release.wait()
        await send({"type": "http.response.body", "body": b" done"})

    settings = uvicorn_config(slow, edge_config(head_timeout_s=0.5), "warning", grace_s=1)  # type: ignore[arg-type]
    settings.lifespan = "off"
    server = uvicorn.Server(settings)
    sock = socket.create_server(("127.0.0.1", 0))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        reader, writer = await asyncio.open_connection(*sock.getsockname())
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /hea")  # a pipelined head begins
        async with asyncio.timeout(5):
            got = await reader.readuntil(b"first")
            await asyncio.sleep(1.0)  # (not a sync): twice the head deadline passes meanwhile
            release.set()
            got += await reader.read()  # the 408 for the unfinished head, after " done"
        await closed(writer)
    finally:
        server.should_exit = True
        await task
        sock.close()
    assert b" done" in got, got
    assert got.index(b" done") < got.index(b"HTTP/1.1 408")


async def test_the_servers_own_refusals_are_counted() -> None:
    """Logged at most once per interval, but every refusal counts in
    vllm_switch_rejected_total (model "unknown": no request was read)."""
    async with serve_proxy(edge_config(head_timeout_s=0.3), reconciled=False) as proxy:
        port = port_of(proxy.url)
        for _ in range(3):
            openai_error(await until_closed(port), 408, "request_timeout")
        openai_error(
            await until_closed(port, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"),
            400,
            "invalid_request",
        )
        async with httpx.AsyncClient(base_url=proxy.url) as client:
            metrics = (await client.get("/metrics")).text
    assert 'vllm_switch_rejected_total{model="unknown",reason="request_timeout"} 3.0' in metrics
    assert 'vllm_switch_rejected_total{model="unknown",reason="bad_input"} 1.0' in metrics
