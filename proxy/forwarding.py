"""Reading a client request once, and streaming a backend's response back, chunk by chunk.

`UpstreamResponse` owns the upstream httpx response and the backend lease for the whole
life of the client response: whether the body ends, the backend fails mid-stream or the
client disconnects, the upstream is closed (vLLM aborts the request: no slot stays busy) and
the lease is released (a drain waiting on it can proceed). Bytes are never re-buffered, and
headers travel as raw bytes both ways (no decode/re-encode that a non-ASCII value could break).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import httpx
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.disconnect import Watch, watching_client
from proxy.errors import (
    ClientGoneError,
    InvalidRequestError,
    PayloadTooLargeError,
    UpstreamUnreachableError,
    sse_error,
)

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
_REQUEST_DROP = HOP_BY_HOP | {b"host", b"content-length", b"authorization"}
_RESPONSE_DROP = HOP_BY_HOP | {b"date", b"server"}
RawHeaders = list[tuple[bytes, bytes]]


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
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InvalidRequestError(f"request body is not valid JSON: {reason}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("request body must be a JSON object")
    if _depth(data) > max_depth:
        raise InvalidRequestError(f"request body is nested deeper than {max_depth} levels")
    return data


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
    headers = [(k, v) for k, v in raw if k.lower() not in _REQUEST_DROP]
    if api_key:
        headers.append((b"authorization", f"Bearer {api_key}".encode()))
    return headers


def response_headers(upstream: httpx.Response, extra: Mapping[str, str]) -> RawHeaders:
    headers = [(k.lower(), v) for k, v in upstream.headers.raw if k.lower() not in _RESPONSE_DROP]
    if upstream.headers.get("content-type", "").startswith("text/event-stream"):
        headers.append((b"x-accel-buffering", b"no"))  # tell nginx & co. not to buffer the stream
    headers += [(k.encode(), v.encode()) for k, v in extra.items()]
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
            return cls(upstream, release, response_headers(upstream, extra), backend, observer)
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
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        try:
            async for chunk in self._upstream.aiter_raw():
                self._observer.first_byte()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.HTTPError as exc:
            self._ended = (502, "upstream_failed")
            if not self._sse:
                raise  # abort the connection: a truncated body must not look complete
            # headers are gone: end the stream with an error event, as vLLM does
            error = UpstreamUnreachableError(
                f"backend {self._backend!r} failed mid-stream: {type(exc).__name__}: {exc}"
            )
            await send({"type": "http.response.body", "body": sse_error(error), "more_body": True})
        except OSError:
            self._ended = self._ended or (499, "client_gone")
            return  # the client is gone
        watch.armed = False  # (uvicorn also says "disconnect" once a response is complete)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
