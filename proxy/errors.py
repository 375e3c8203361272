"""Errors the proxy decides on, rendered as OpenAI error bodies, and the handlers for them.

Backend responses with 4xx/5xx are not ProxyErrors: they pass through untouched. Every error
that *this proxy* produces carries the header `X-VLLM-Switch-Error: <code>` so operators can
tell them apart from the backend's own.
"""

from __future__ import annotations

import json
from typing import ClassVar

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

ERROR_HEADER = "X-VLLM-Switch-Error"


class ProxyError(Exception):
    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"

    def __init__(
        self, message: str, *, param: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> Response:
        headers = {ERROR_HEADER: self.code}
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, round(self.retry_after_s)))
        # ASCII JSON: a client's string echoed in a message (a model name) can hold anything
        return Response(
            json.dumps(self.body()).encode(),
            status_code=self.status_code,
            headers=headers,
            media_type="application/json",
        )


class InvalidRequestError(ProxyError):
    """Malformed request (bad JSON, missing `model`)."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class UnauthorizedError(ProxyError):
    """No API key, or a wrong one (the key is never echoed)."""

    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class HeadersTooLargeError(ProxyError):
    status_code = 431
    error_type = "invalid_request_error"
    code = "headers_too_large"


class ModelNotFoundError(ProxyError):
    """The request names a model this proxy does not serve."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class NotFoundError(ProxyError):
    """No such route (backend dev endpoints are deliberately absent)."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowedError(ProxyError):
    status_code = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLargeError(ProxyError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"


class QueueFullError(ProxyError):
    """Too many requests already wait for this model."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "queue_full"


class BackendUnavailableError(ProxyError):
    """The model could not be made ready (wake failed, timed out, or the backend is failed)."""

    status_code = 503
    error_type = "server_error"
    code = "backend_unavailable"


class UpstreamUnreachableError(ProxyError):
    status_code = 502
    error_type = "server_error"
    code = "upstream_unreachable"


class UpstreamTimeoutError(ProxyError):
    status_code = 504
    error_type = "server_error"
    code = "upstream_timeout"


def upstream_failure(what: str, exc: Exception) -> ProxyError:
    """A backend's transport failure as the client's error: a timeout is 504, anything else
    (refused, reset, a malformed response) 502. `what` says what failed, naming the model."""
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeoutError(f"{what}: timed out ({type(exc).__name__})")
    return UpstreamUnreachableError(f"{what}: {type(exc).__name__}: {exc}")


class ClientGoneError(Exception):
    """The client disconnected before its request was answered (nothing is sent back)."""


def sse_error(exc: ProxyError) -> bytes:
    """The event that ends a stream whose headers are already sent (vLLM frames it the same)."""
    return f"data: {json.dumps(exc.body())}\n\ndata: [DONE]\n\n".encode()


async def _proxy_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    return exc.response()


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return NotFoundError(
            "no such route; see GET /v1/models and the README for the API"
        ).response()
    if exc.status_code == 405:
        response = MethodNotAllowedError(f"method not allowed: {exc.detail}").response()
        if exc.headers:
            response.headers.update(exc.headers)
        return response
    return JSONResponse(
        {
            "error": {
                "message": str(exc.detail),
                "type": "invalid_request_error",
                "param": None,
                "code": str(exc.status_code),
            }
        },
        status_code=exc.status_code,
        headers={ERROR_HEADER: str(exc.status_code)},
    )


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ())) or None
    return InvalidRequestError(
        f"invalid request: {first.get('msg', 'validation error')}", param=param
    ).response()


def install_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProxyError, _proxy_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
