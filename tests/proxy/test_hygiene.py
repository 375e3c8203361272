"""Header and body hygiene at the proxy's HTTP edges (issue 13).

Toward a backend: only the allow-list of the client's headers, never a credential, never the
client's framing. Toward a client: no hop-by-hop or `Connection`-listed header, Content-Length
only for a body framed by it, only header bytes uvicorn can send, a cut stream ended by a clean
error event. A body that is not UTF-8 JSON, or holds a lone surrogate anywhere, is a 400 OpenAI
error, and the proxy serves the next request. (Redirects, CORS, 500s: test_security.py;
`response_headers` alone: test_response_headers.py.)

The backend is `Recorder` (tests/helpers/recorder.py), a raw-socket stand-in for vLLM in the
test's event loop: it answers the proxy's start-up calls and records every other request,
answering it with the next scripted reply. The response-edge tests run behind both upstream
parsers the proxy uses: its own (llhttp) and httpx's default (h11, the one an
`https://` backend gets), which lets through more (control bytes in values, both framings).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import hypothesis
import pytest
from hypothesis import strategies as st

from proxy.app import create_app
from proxy.config import ProxyConfig
from tests.helpers.bodies import chat
from tests.helpers.proxy_server import RunningProxy, serve_proxy
from tests.helpers.recorder import COMPLETION, Recorder, reply

pytestmark = pytest.mark.process  # the proxy under uvicorn before a loopback backend

BACKEND_KEY = "sk-backend-key-0123"


def one_model(url: str) -> ProxyConfig:
    return ProxyConfig.model_validate(
        {"models": [{"name": "m", "url": url, "api_key": BACKEND_KEY}]}
    )


@asynccontextmanager
async def proxied(
    monkeypatch: pytest.MonkeyPatch | None = None, parser: str = "llhttp"
) -> AsyncIterator[tuple[Recorder, RunningProxy, httpx.AsyncClient]]:
    """A Recorder, the proxy in front of it (upstream responses parsed by `parser`), a client."""
    if parser == "h11":
        assert monkeypatch is not None

        def h11(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
            return httpx.AsyncHTTPTransport(limits=limits)

        monkeypatch.setattr("proxy.services.upstream_transport", h11)
    async with (
        Recorder() as backend,
        serve_proxy(one_model(backend.url)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as client,
    ):
        yield backend, proxy, client


async def raw_exchange(url: str, data: bytes) -> bytes:
    """Send `data` as is (it asks for `Connection: close`); everything that came back."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        async with asyncio.timeout(30):
            return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


def assert_openai_error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error: dict[str, Any] = r.json()["error"]
    assert isinstance(error["message"], str)
    return error


# --- toward the backend -------------------------------------------------------------------

SECRETS = [
    b"Authorization: Bearer sk-client-secret-1",
    b"Proxy-Authorization: Basic c2VjcmV0LTI=",
    b"X-Api-Key: sk-xapikey-secret-3",
    b"Api-Key: sk-azure-secret-4",
    b"Cookie: session=sk-cookie-secret-5",
    b"X-Goog-Api-Key: sk-goog-secret-6",
    b"X-Hop: sk-hop-secret-7",  # named in the client's Connection header
]


async def test_only_allowed_client_headers_reach_the_backend() -> None:
    body = json.dumps(chat("m")).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)  # the client frames it chunked
    request = b"\r\n".join(
        [
            b"POST /v1/chat/completions HTTP/1.1",
            b"Host: evil.example",
            b"Content-Type: application/json",
            b"Accept: application/json",
            b"User-Agent: hygiene-test/1",
            b"X-Request-Id: req-0123",
            b"Traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"Tracestate: vendor=1",
            *SECRETS,
            b"OpenAI-Organization: org-0123",
            b"X-Stainless-Lang: python",
            b"X-Forwarded-For: 10.0.0.1",
            b"Connection: close, X-Hop",
            b"Keep-Alive: timeout=5",
            b"TE: trailers",
            b"Expect: 100-continue",
            b"Accept-Encoding: gzip, br",
            b"Transfer-Encoding: chunked",
            b"",
            chunked,
        ]
    )
    async with proxied() as (backend, proxy, _):
        answer = await raw_exchange(proxy.url, request)
    assert b"HTTP/1.1 200 OK\r\n" in answer
    [seen] = backend.seen
    for line in SECRETS:
        assert line.split(b": ", 1)[1] not in seen.head, line
    host = backend.url.removeprefix("http://").encode()
    received = sorted((k, v) for k, v in seen.headers if k != b"connection")
    assert received == sorted(
        [
            (b"host", host),  # the backend's, never the client's
            (b"content-length", b"%d" % len(body)),  # re-framed: the body the proxy read
            (b"content-type", b"application/json"),
            (b"accept", b"application/json"),
            (b"user-agent", b"hygiene-test/1"),
            (b"x-request-id", b"req-0123"),
            (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            (b"tracestate", b"vendor=1"),
            (b"accept-encoding", b"identity"),  # bodies pass through undecoded
            (b"authorization", f"Bearer {BACKEND_KEY}".encode()),  # the backend's own key, once
        ]
    )
    assert [v.lower() for v in seen.get(b"connection")] in ([], [b"keep-alive"], [b"close"])
    assert seen.body == body


# --- toward the client --------------------------------------------------------------------

PARSERS = pytest.mark.parametrize("parser", ["llhttp", "h11"])


@PARSERS
async def test_hop_by_hop_and_connection_listed_response_headers_are_dropped(
    monkeypatch: pytest.MonkeyPatch, parser: str
) -> None:
    async with proxied(monkeypatch, parser) as (backend, _, client):
        backend.replies.append(
            reply(
                COMPLETION,
                b"Connection: keep-alive, X-Internal, x-other",
                b"X-Internal: backend-secret",
                b"X-Other: 1",
                b"Keep-Alive: timeout=5",
                b"Proxy-Authenticate: Basic",
                b"Trailer: x-checksum",
                b"X-Kept: yes",
                b"X-Vllm-Switch-Model: spoofed",  # the proxy's own headers are the proxy's
            )
        )
        r = await client.post("/v1/chat/completions", json=chat("m"))
    assert r.status_code == 200
    assert r.content == COMPLETION
    assert r.headers["x-kept"] == "yes"
    for name in ("x-internal", "x-other", "keep-alive", "proxy-authenticate", "trailer"):
        assert name not in r.headers, name
    assert r.headers.get_list("x-vllm-switch-model") == ["m"]
    assert r.headers.get_list("content-length") == [str(len(COMPLETION))]


CHUNKED_AND_LENGTH = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 3\r\n"
    b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(COMPLETION), COMPLETION)
)


@PARSERS
@pytest.mark.parametrize(
    ("answer", "status", "body"),
    [
        (CHUNKED_AND_LENGTH, 200, COMPLETION),
        (b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n", 304, b""),
        (b"HTTP/1.1 204 No Content\r\ncontent-length: 7\r\n\r\n", 204, b""),
    ],
    ids=["chunked-and-content-length", "304-with-content-length", "204-with-content-length"],
)
async def test_a_received_content_length_goes_where_the_proxy_reframes(
    monkeypatch: pytest.MonkeyPatch, parser: str, answer: bytes, status: int, body: bytes
) -> None:
    """RFC 9112 6.3: the whole body (never a torn one that looks complete), or a clean 502;
    then the next request is served."""
    async with proxied(monkeypatch, parser) as (backend, _, client):
        backend.replies.append(answer)
        r = await client.post("/v1/chat/completions", json=chat("m"))
        after = await client.post("/v1/chat/completions", json=chat("m"))
    if r.status_code == 502:  # refused by the upstream parser (llhttp refuses both framings)
        assert_openai_error(r, 502)
    else:
        assert (r.status_code, r.content) == (status, body)
        assert r.headers.get("content-length") in (None, str(len(body))), r.headers
    assert (after.status_code, after.content) == (200, COMPLETION)


@pytest.mark.parametrize(
    "line",
    [b"X-Bad: a\x01b", b"X-Bad: a\x7fb", b"X-Bad: a\x1bb"],
    ids=["soh", "del", "esc"],
)
async def test_a_response_header_uvicorn_cannot_send_is_a_502(
    monkeypatch: pytest.MonkeyPatch, line: bytes
) -> None:
    """h11 accepts control bytes in values; uvicorn would refuse to send them and drop the
    connection without an answer. (llhttp refuses them itself: it is not tested here.)"""
    async with proxied(monkeypatch, "h11") as (backend, _, client):
        backend.replies.append(reply(COMPLETION, line))
        r = await client.post("/v1/chat/completions", json=chat("m"))
        after = await client.post("/v1/chat/completions", json=chat("m"))
    assert "invalid response header" in assert_openai_error(r, 502)["message"]
    assert (after.status_code, after.content) == (200, COMPLETION)


async def test_a_stream_cut_inside_an_event_still_ends_with_a_clean_error_event() -> None:
    """The partial event is ended first: the error event is never glued to its last line."""
    sse = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n"
    first = b'data: {"a":1}\n\n'
    cut = b'data: {"cho'  # a chunk of 0x40 bytes declared, these sent, then the backend closes
    async with proxied() as (backend, _, client):
        backend.replies.append(
            sse
            + b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n40\r\n%s" % (len(first), first, cut)
        )
        r = await client.post("/v1/chat/completions", json=chat("m", stream=True))
        after = await client.post("/v1/chat/completions", json=chat("m"))
    assert r.status_code == 200
    assert r.content.startswith(first + cut)
    events = [e.removeprefix(b"data: ") for e in r.content.split(b"\n\n") if e]
    assert events[0] == b'{"a":1}'
    assert json.loads(events[-2])["error"]["code"] == "upstream_unreachable"
    assert events[-1] == b"[DONE]"
    assert (after.status_code, after.content) == (200, COMPLETION)


# --- bodies -------------------------------------------------------------------------------

BAD_BODIES = {
    "lone-high-in-model": b'{"model":"\\ud800","messages":[]}',
    "lone-low-nested": b'{"model":"m","messages":[{"role":"user","content":"a\\uDC00b"}]}',
    "reversed-pair": b'{"model":"m","messages":[{"role":"user","content":"\\udc00\\ud800"}]}',
    "high-at-end": b'{"model":"m","messages":[],"user":"x\\ud83d"}',
    "in-a-key": b'{"model":"m","messages":[],"\\ud800":1}',
    "in-a-nested-key": b'{"model":"m","messages":[],"x":{"y":[{"\\udfff":true}]}}',
    "in-an-array": b'{"model":"m","messages":[],"stop":["ok","\\ud800"]}',
    "utf8-encoded-surrogate": b'{"model":"m","messages":[],"user":"\xed\xa0\x80"}',
    "invalid-byte": b'{"model":"m\xff","messages":[]}',
    "overlong": b'{"model":"m","messages":[],"user":"\xc0\xaf"}',
    "truncated-sequence-in-key": b'{"model":"m","messages":[],"\xe2\x82":1}',
    "latin-1": b'{"model":"m","messages":[],"user":"caf\xe9"}',
    "utf-16": json.dumps(chat("m")).encode("utf-16"),
    "utf-16-le": json.dumps(chat("m")).encode("utf-16-le"),
    "utf-32-be": json.dumps(chat("m")).encode("utf-32-be"),
    "utf-8-bom": b"\xef\xbb\xbf" + json.dumps(chat("m")).encode(),
}


@pytest.mark.parametrize("body", list(BAD_BODIES.values()), ids=list(BAD_BODIES))
async def test_bodies_that_are_not_valid_unicode_utf8_json_are_400(body: bytes) -> None:
    async with proxied() as (backend, _, client):
        r = await client.post("/v1/chat/completions", content=body)
        after = await client.post("/v1/chat/completions", json=chat("m"))
    assert assert_openai_error(r, 400)["code"] == "invalid_request"
    assert (after.status_code, after.content) == (200, COMPLETION)
    assert len(backend.seen) == 1, "the bad body never reached the backend"


async def test_surrogate_pairs_and_escaped_backslashes_are_not_refused() -> None:
    """Only lone surrogates are refused: a pair is one code point, `\\\\ud800` is text."""
    pair = b'{"model":"m","messages":[{"role":"user","content":"\\ud83d\\ude00 \\\\ud800"}]}'
    raw = '{"model":"m","messages":[{"role":"user","content":"\U0001f600 caf\u00e9"}]}'
    async with proxied() as (backend, _, client):
        for body in (pair, raw.encode()):
            r = await client.post("/v1/chat/completions", content=body)
            assert r.status_code == 200, r.text
    assert [s.body for s in backend.seen] == [pair, raw.encode()]


# --- property: hostile bodies -------------------------------------------------------------

EXAMPLES = int(os.environ.get("HYGIENE_EXAMPLES", "150"))
_strings = st.one_of(
    st.sampled_from(["m", "model", "messages", "", "\ud800", "\udfff", "\ud83d\ude00", "\\"]),
    st.text(st.characters(exclude_categories=()), max_size=6),  # surrogates included
)
_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _strings,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_strings, inner, max_size=3),
    max_leaves=10,
)


@st.composite
def hostile_bodies(draw: st.DrawFn) -> bytes:
    """JSON-ish bodies: `model` often valid, strings with random surrogates, escaped or
    UTF-8-encoded, then sometimes byte garbage spliced in or the whole body random."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=40))
    if draw(st.integers(0, 9)) == 0:
        obj = draw(_values)  # not an object at all
    else:
        model = draw(st.one_of(st.just("m"), _strings, _values))
        obj = {**draw(st.dictionaries(_strings, _values, max_size=4)), "model": model}
    if draw(st.booleans()):
        data = json.dumps(obj).encode()  # surrogates escaped as \udXXX
    else:
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
    return data


@pytest.fixture
async def in_process() -> AsyncIterator[httpx.AsyncClient]:
    """The app without a server (httpx's ASGI transport), its lifespan run, a Recorder behind."""
    async with Recorder() as backend:
        app = create_app(one_model(backend.url))
        async with app.router.lifespan_context(app):
            await app.state.services.switcher.wait_reconciled()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
                yield client


# (hypothesis' failure report imports libcst, which warns: a failure must not become an error)
@pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")
@hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(body=hostile_bodies())
async def test_hostile_bodies_never_get_a_5xx_or_a_non_json_answer(
    in_process: httpx.AsyncClient, body: bytes
) -> None:
    r = await in_process.post("/v1/chat/completions", content=body)
    assert r.status_code < 500, r.text
    assert r.headers["content-type"] == "application/json"
    answer = json.loads(r.content)
    if r.status_code >= 400:
        assert isinstance(answer["error"]["message"], str)
    else:
        assert r.content == COMPLETION
