"""Reading a client request once, and streaming a backend's response back, chunk by chunk.

`UpstreamResponse` owns the upstream httpx response and the backend lease for the whole
life of the client response: whether the body ends, the backend fails mid-stream or the
client disconnects, the upstream is closed (vLLM aborts the request: no slot stays busy) and
the lease is released (a drain waiting on it can proceed). A switch held past `max_hold_s`
revokes it (`revoke`): upstream closed and lease released at once, the stream ended with an
error event and [DONE]. Bytes are never re-buffered, and
headers travel as raw bytes both ways (no decode/re-encode that a non-ASCII value could break).

Hygiene at both edges (stateless): a body is UTF-8 JSON with no lone surrogate, or a 400;
a backend sees only an allow-list of the client's headers (never a credential, never the
client's framing); a client sees the backend's end-to-end headers only, each one valid to send,
and a Content-Length only where the backend framed the body by it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import httpx
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.errors import (
    BackendUnavailableError,
    ClientGoneError,
    InvalidRequestError,
    PayloadTooLargeError,
    ProxyError,
    UpstreamUnreachableError,
    sse_error,
)
from proxy.http.disconnect import Watch, watching_client
from proxy.http.rendering import render_error, upstream_failure
from proxy.upstream.http1 import is_field_value, is_token

# The client's headers a backend may see (ASGI servers give names in lower case). Whatever is
# not listed stays here: credentials of every kind (Authorization, Proxy-Authorization,
# X-Api-Key, api-key, Cookie, ...), the client's framing and hop-by-hop headers (Host,
# Content-Length, Transfer-Encoding, Connection, Expect, TE, Upgrade, ...) and anything else.
# httpx sets Host and Content-Length for the body the proxy sends.
FORWARDED_REQUEST_HEADERS = frozenset(
    {
        b"content-type",
        b"accept",
        b"user-agent",
        b"x-request-id",  # vLLM echoes it with --enable-request-id-headers
        b"x-client-request-id",  # a request id of the client's choosing (OpenAI's API takes it)
        b"x-correlation-id",
        b"traceparent",  # W3C trace context: vLLM's OpenTelemetry tracing reads these two
        b"tracestate",
    }
)
# Bodies pass through undecoded, so no coding is accepted (without the header any would be,
# RFC 9110 12.5.3): an error body stays readable, and no compressor holds back stream chunks.
_IDENTITY = (b"accept-encoding", b"identity")
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
WHOLE_BODY_BYTES = 1024 * 1024
_TIMING = frozenset(
    b"x-vllm-switch-" + k for k in (b"model", b"queue-ms", b"sleep-ms", b"wake-ms", b"warmup-ms")
)
_RESPONSE_DROP = HOP_BY_HOP | {b"content-length", b"date", b"server"}  # uvicorn sends its own
_EDGE_SPACE = frozenset(b" \t")
log = logging.getLogger(__name__)
RawHeaders = list[tuple[bytes, bytes]]
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # an escaped surrogate, paired or not
_SURROGATE = re.compile("[\ud800-\udfff]")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"request body of {declared} bytes exceeds the limit of {limit} bytes"
        )
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGoneError from None
    return b"".join(chunks)


def parse_json_object(body: bytes, max_depth: int = 64) -> dict[str, Any]:
    """The body as a JSON object; only UTF-8 JSON (RFC 8259 8.1) is accepted, with no lone
    surrogate anywhere: an invalid string would fail later, where it is encoded for an answer."""
    try:  # strict, once: json.loads(bytes) would take UTF-16/32 and UTF-8-encoded surrogates
        text = body.decode()
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(
            f"request body is not valid UTF-8 (byte {exc.start}: {exc.reason}); send UTF-8 JSON"
        ) from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InvalidRequestError(f"request body is not valid JSON: {reason}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("request body must be a JSON object")
    if _depth(data) > max_depth:
        raise InvalidRequestError(f"request body is nested deeper than {max_depth} levels")
    # json.loads joins escaped pairs into one code point: only a lone escape leaves a surrogate
    if _SURROGATE_ESCAPE.search(body) and (found := _lone_surrogate(data)) is not None:
        path, in_key = found
        where = f"a key of {path or 'the body'}" if in_key else path
        raise InvalidRequestError(
            f"request body has a lone UTF-16 surrogate escape (\\uD800-\\uDFFF not in a valid "
            f"pair) in {where}; JSON strings must be valid Unicode",
            param=path or None,
        )
    return data


def _lone_surrogate(value: object) -> tuple[str, bool] | None:
    """The path (`messages[0].content`) of the first string with a surrogate, and whether it is
    a key (then the path is its object's); None if there is none."""
    stack: list[tuple[object, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return path[:200], False
        elif isinstance(item, dict):
            for key, v in item.items():
                if _SURROGATE.search(key):
                    return path[:200], True
                stack.append((v, f"{path}.{key}" if path else key))
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(item))
    return None


def _depth(value: object) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def with_model(body: bytes, data: dict[str, Any], model: str) -> bytes:
    """The body as the backend must see it: original bytes unless `model` needs rewriting."""
    if data.get("model") == model:
        return body
    return json.dumps({**data, "model": model}, separators=(",", ":")).encode()


def request_headers(raw: RawHeaders, api_key: str | None) -> RawHeaders:
    """What a backend gets: the allowed client headers, and its own key (the hot path: one
    set lookup per header)."""
    allowed = FORWARDED_REQUEST_HEADERS
    headers = [(k, v) for k, v in raw if k.lower() in allowed]
    headers.append(_IDENTITY)
    if api_key:
        headers.append((b"authorization", b"Bearer " + api_key.encode()))
    return headers


def response_headers(
    upstream: httpx.Response, extra: Mapping[str, str], backend: str
) -> RawHeaders:
    """What the client gets: the backend's end-to-end headers (hop-by-hop ones, those its
    `Connection` names (RFC 9110 7.6.1) and those the proxy sets itself dropped), each valid
    to send, or a 502. Content-Length only for a body framed by it (RFC 9112 6.3: when the
    proxy re-frames, the received one goes); uvicorn then sends the body as is, else chunked."""
    status = upstream.status_code
    ours = {k.encode(): v.encode("latin-1", "replace") for k, v in extra.items()}  # lower case
    headers: RawHeaders = []
    nominated: set[bytes] = set()
    lengths: list[bytes] = []
    sse = upstream.headers.get("content-type", "").startswith("text/event-stream")
    # a stream is never sent with a length: an error event may have to follow what came
    framed_by_length = status >= 200 and status not in (204, 304) and not sse
    for name, value in upstream.headers.raw:
        key = name.lower()
        if key in _RESPONSE_DROP:
            if key == b"content-length":
                lengths.append(value.strip(b" \t"))
            elif key == b"transfer-encoding":
                framed_by_length = False
            elif key == b"connection":
                nominated.update(t.strip(b" \t").lower() for t in value.split(b","))
            continue
        if key in ours:
            continue
        if not is_token(key) or not is_field_value(value):
            log.warning("backend %s sent an invalid header %r: %r", backend, name, value[:200])
            raise UpstreamUnreachableError(
                f"backend {backend!r} sent an invalid response header {name[:64]!r}"
            )
        if value and (value[0] in _EDGE_SPACE or value[-1] in _EDGE_SPACE):
            value = value.strip(b" \t")  # optional whitespace (RFC 9110 5.5): h11 refuses it
        headers.append((key, value))
    if nominated:
        headers = [(k, v) for k, v in headers if k not in nominated]
        framed_by_length = framed_by_length and b"content-length" not in nominated
    if framed_by_length and len(set(lengths)) == 1 and lengths[0].isdigit():
        headers.append((b"content-length", lengths[0]))
    if sse:
        headers.append((b"x-accel-buffering", b"no"))  # tell nginx & co. not to buffer the stream
    headers += ours.items()
    return headers


class Observer(Protocol):
    """Told when the first body byte went out and when the response ended (with its status)."""

    def first_byte(self) -> None: ...

    def finish(self, status: int, *, error: str | None = None) -> None: ...


class UpstreamResponse(Response):
    """Must be constructed through `UpstreamResponse.take`, which never leaks on failure."""

    def __init__(
        self,
        upstream: httpx.Response,
        release: Callable[[], None],
        headers: RawHeaders,
        backend: str,
        observer: Observer,
    ) -> None:
        self.status_code = upstream.status_code
        self.background = None
        self.raw_headers = headers
        self._upstream = upstream
        self._release = release
        self._backend = backend
        self._observer = observer
        self._ended: tuple[int, str | None] | None = None  # how the response ended, if not normally
        self._sse = upstream.headers.get("content-type", "").startswith("text/event-stream")
        self._revoked: str | None = None  # why the switching core ended this response early
        self._closing: asyncio.Task[None] | None = None

    def revoke(self, reason: str) -> None:
        """End this response early (the lease's `on_revoke`): the upstream is closed, so the
        backend aborts the request, the lease is released, and the stream ends with an error
        event and [DONE] (a non-stream answer not sent yet: a 503)."""
        if self._revoked is None:
            self._revoked = reason
            self._closing = asyncio.get_running_loop().create_task(self._upstream.aclose())
            # the backend's part is over once its connection closes: the lease goes now, not
            # when a slow client has read the rest (that is the very hold being ended)
            self._release()

    @classmethod
    async def take(
        cls,
        upstream: httpx.Response,
        release: Callable[[], None],
        extra: Mapping[str, str],
        backend: str,
        observer: Observer,
    ) -> UpstreamResponse:
        """Own `upstream` and the lease from here on; if building fails, free both now."""
        try:
            headers = response_headers(upstream, extra, backend)
            return cls(upstream, release, headers, backend, observer)
        except BaseException:
            try:
                await upstream.aclose()
            finally:
                release()
            raise

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with watching_client(receive) as watch:  # the client left: stop reading
                await self._stream(send, watch)
        except ClientGoneError:
            self._ended = self._ended or (499, "client_gone")
        finally:
            try:  # closing never loses to a cancel: the transports close the socket before
                await self._upstream.aclose()  # any await, and httpcore shields its own close
            finally:
                self._release()
                status, error = self._ended or (self.status_code, None)
                self._observer.finish(status, error=error)

    async def _stream(self, send: Send, watch: Watch) -> None:
        chunks = self._upstream.aiter_raw()
        held: list[bytes] = []
        if not self._sse:
            # an answer that is not a stream is held until it is complete (or past
            # WHOLE_BODY_BYTES): a body the backend breaks is then a clean 502/504, never a
            # client connection cut mid-body (vLLM's answers come in one piece: nothing waits)
            size = 0
            try:
                async for chunk in chunks:
                    held.append(chunk)
                    size += len(chunk)
                    if size > WHOLE_BODY_BYTES:
                        break
                else:
                    await self._send_whole(send, watch, b"".join(held))
                    return
            except httpx.HTTPError as exc:
                if self._revoked is not None:  # ended before anything of the body went out
                    await self._send_error(send, BackendUnavailableError(self._revoked), "revoked")
                else:
                    await self._send_failure(send, exc)
                return
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        last = b"\n\n"  # the last bytes sent end an event (or nothing was sent)
        try:
            if held:
                self._observer.first_byte()
                await send(
                    {"type": "http.response.body", "body": b"".join(held), "more_body": True}
                )
            async for last in chunks:
                self._observer.first_byte()
                await send({"type": "http.response.body", "body": last, "more_body": True})
        except httpx.HTTPError as exc:
            error: ProxyError
            if self._revoked is not None:
                self._ended = (503, "revoked")
                error = BackendUnavailableError(self._revoked)
            else:
                self._ended = (502, "upstream_failed")
                log.warning(
                    "backend %s failed mid-body: %s: %s", self._backend, type(exc).__name__, exc
                )
                error = UpstreamUnreachableError(
                    f"backend {self._backend!r} failed mid-stream: {type(exc).__name__}: {exc}"
                )
            if not self._sse:
                raise  # abort the connection: a truncated body must not look complete
            # headers are gone: end the stream with an error event, as vLLM does
            event = sse_error(error)
            if not last.endswith((b"\n\n", b"\r\n\r\n")):  # cut inside an event: end it
                event = b"\n\n" + event  # first, or the error would be glued to its last line
            await send({"type": "http.response.body", "body": event, "more_body": True})
        except OSError:
            self._ended = self._ended or (499, "client_gone")
            return  # the client is gone
        watch.armed = False  # (uvicorn also says "disconnect" once a response is complete)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_whole(self, send: Send, watch: Watch, body: bytes) -> None:
        self._observer.first_byte()
        watch.armed = False
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send({"type": "http.response.body", "body": body})

    async def _send_failure(self, send: Send, exc: httpx.HTTPError) -> None:
        """The backend broke a body before anything of it went out: an OpenAI error instead."""
        error = upstream_failure(f"backend {self._backend!r} broke its response body", exc)
        log.warning("%s", error.message)
        await self._send_error(send, error, "upstream_failed")

    async def _send_error(self, send: Send, error: ProxyError, why: str) -> None:
        """The proxy's error instead of a body not sent yet, with this request's own headers."""
        self._ended = (error.status_code, why)
        failed = render_error(error)
        ours = [(k, v) for k, v in self.raw_headers if k in _TIMING or k == b"x-request-id"]
        headers = failed.raw_headers + ours
        await send(
            {"type": "http.response.start", "status": failed.status_code, "headers": headers}
        )
        await send({"type": "http.response.body", "body": failed.body})
