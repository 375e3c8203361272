"""A backend's error answer, made an OpenAI error object when it is not one already.

vLLM answers some errors in FastAPI's shape, not OpenAI's: a route the model does not serve
(`POST /v1/embeddings` on a generate model) is `404 {"detail":"Not Found"}`, and the OpenAI
SDKs then show no message at all. Error answers (4xx/5xx, never streams) are small, so they
are read whole: one that is already `{"error": {"message": ...}}` passes through byte for
byte; any other body is wrapped, keeping the backend's status and its words. Stateless.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import httpx
from starlette.responses import Response

from proxy.http.forwarding import response_headers
from proxy.http.rendering import upstream_failure

MAX_ERROR_BYTES = 1 << 20
_CODES = {404: "not_found", 405: "method_not_allowed"}


def is_error(upstream: httpx.Response) -> bool:
    return upstream.status_code >= 400 and not upstream.headers.get("content-type", "").startswith(
        "text/event-stream"
    )


async def error_response(
    upstream: httpx.Response, backend: str, path: str, extra: Mapping[str, str]
) -> Response:
    """Read and close `upstream` (an error answer); the response to send the client."""
    body = bytearray()
    try:
        async for chunk in upstream.aiter_raw():
            body += chunk
            if len(body) > MAX_ERROR_BYTES:
                break
    except httpx.HTTPError as exc:  # the error answer itself broke (cut, malformed, stalled)
        raise upstream_failure(f"backend {backend!r} broke its error answer", exc) from exc
    finally:
        await upstream.aclose()
    status = upstream.status_code
    headers = [
        (k, v)
        for k, v in response_headers(upstream, extra, backend)
        if k not in (b"content-length", b"content-encoding")
    ]
    if _is_openai_error(bytes(body)) and upstream.headers.get("content-encoding") is None:
        return _raw(status, bytes(body), headers)
    wrapped = json.dumps(_wrap(status, bytes(body), backend, path)).encode()
    headers = [(k, v) for k, v in headers if k != b"content-type"]
    return _raw(status, wrapped, [*headers, (b"content-type", b"application/json")])


def _raw(status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> Response:
    response = Response(body, status_code=status)
    response.raw_headers = [*headers, (b"content-length", str(len(body)).encode())]
    return response


def _is_openai_error(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except ValueError:
        return False
    error = data.get("error") if isinstance(data, dict) else None
    return isinstance(error, dict) and isinstance(error.get("message"), str)


def _wrap(status: int, body: bytes, backend: str, path: str) -> dict[str, object]:
    try:
        data = json.loads(body)
        detail = data.get("detail") if isinstance(data, dict) else None
    except ValueError:
        detail = None
    said = str(detail) if detail is not None else body.decode("utf-8", "replace").strip()[:1000]
    if status == 404 and said == "Not Found":
        message = f"model {backend!r} does not serve {path} (its backend answered 404 Not Found)"
    else:
        message = f"the backend of model {backend!r} answered {status}: {said or '(no body)'}"
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error" if status < 500 else "server_error",
            "param": None,
            "code": _CODES.get(status, "backend_error"),
        }
    }
