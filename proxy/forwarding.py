"""Reading a client request once, and streaming a backend's response back, chunk by chunk.

`UpstreamResponse` owns the upstream httpx response and the backend lease for the whole
life of the client response: whether the body ends, the backend fails mid-stream or the
client disconnects, the upstream is closed (vLLM aborts the request: no slot stays busy) and
the lease is released (a drain waiting on it can proceed). Bytes are never re-buffered.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.backends import Lease
from proxy.errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    UpstreamUnreachableError,
    sse_error,
)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length", "authorization"}
_RESPONSE_DROP = HOP_BY_HOP | {"date", "server"}


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"request body of {declared} bytes exceeds the limit of {limit} bytes"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequestError("request body must be a JSON object")
    return data


def with_model(body: bytes, data: dict[str, Any], model: str) -> bytes:
    """The body as the backend must see it: original bytes unless `model` needs rewriting."""
    if data.get("model") == model:
        return body
    return json.dumps({**data, "model": model}, separators=(",", ":"), ensure_ascii=False).encode()


def request_headers(incoming: Mapping[str, str], api_key: str | None) -> dict[str, str]:
    headers = {k: v for k, v in incoming.items() if k.lower() not in _REQUEST_DROP}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return headers


def response_headers(upstream: httpx.Headers, extra: Mapping[str, str]) -> dict[str, str]:
    headers = {k: v for k, v in upstream.items() if k.lower() not in _RESPONSE_DROP}
    if upstream.get("content-type", "").startswith("text/event-stream"):
        headers["x-accel-buffering"] = "no"  # tell nginx & co. not to buffer the stream
    headers.update(extra)
    return headers


class UpstreamResponse(Response):
    def __init__(
        self, upstream: httpx.Response, lease: Lease, extra_headers: Mapping[str, str], backend: str
    ) -> None:
        self.status_code = upstream.status_code
        self.background = None
        self._upstream = upstream
        self._lease = lease
        self._backend = backend
        self._sse = upstream.headers.get("content-type", "").startswith("text/event-stream")
        self.raw_headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in response_headers(upstream.headers, extra_headers).items()
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def stream() -> None:
                    await self._stream(send)
                    tg.cancel_scope.cancel()

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()  # the client left: stop reading the backend

                tg.start_soon(stream)
                tg.start_soon(watch_disconnect)
        finally:
            with anyio.CancelScope(shield=True):
                await self._upstream.aclose()
            self._lease.release()

    async def _stream(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        try:
            async for chunk in self._upstream.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.HTTPError as exc:
            if self._sse:  # headers are gone: end the stream with an error event, as vLLM does
                error = UpstreamUnreachableError(
                    f"backend {self._backend!r} failed mid-stream: {type(exc).__name__}: {exc}"
                )
                await send(
                    {"type": "http.response.body", "body": sse_error(error), "more_body": True}
                )
        except OSError:
            return  # the client is gone
        await send({"type": "http.response.body", "body": b"", "more_body": False})
