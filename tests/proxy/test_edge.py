"""The inbound edge (proxy/http/edge/protocol.py, proxy/http/edge/fdlimit.py) over real loopback
sockets: deadlines, caps and early rejections answered in OpenAI JSON. (Floods and the open-file
limit: tests/proxy/test_edge_floods.py; the parts that need no socket: test_edge_parts.py.)

The backend of these proxies is a closed port: /health answers regardless (it is liveness)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import httpx
import pytest
import uvicorn

from proxy.app import create_app
from proxy.cli import uvicorn_config
from proxy.config import ProxyConfig
from tests.helpers.processes import free_port
from tests.helpers.proxy_server import serve_proxy
from tests.helpers.raw_http import HEALTH, HEALTH_CLOSE, closed, openai_error, parse, until_closed

pytestmark = pytest.mark.process  # the proxy under uvicorn on loopback


def edge_config(**limits: Any) -> ProxyConfig:
    url = f"http://127.0.0.1:{free_port()}"
    return ProxyConfig.model_validate({"models": [{"name": "m", "url": url}], "limits": limits})


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
