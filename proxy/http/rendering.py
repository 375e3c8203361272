"""Rendering of the proxy's errors as HTTP answers, and FastAPI's own errors in the same
OpenAI shape. Also maps a backend's transport failure to the client's error. Stateless.
"""

from __future__ import annotations

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from proxy.errors import (
    ERROR_HEADER,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    ProxyError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)


def render_error(exc: ProxyError) -> Response:
    """The answer to `exc`: its status, the proxy's headers, the OpenAI error body."""
    return Response(
        exc.encoded_body(),
        status_code=exc.status_code,
        headers=exc.headers(),
        media_type="application/json",
    )


def upstream_failure(what: str, exc: Exception) -> ProxyError:
    """A backend's transport failure as the client's error: a timeout is 504, anything else
    (refused, reset, a malformed response) 502. `what` says what failed, naming the model."""
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeoutError(f"{what}: timed out ({type(exc).__name__})")
    return UpstreamUnreachableError(f"{what}: {type(exc).__name__}: {exc}")


async def _proxy_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    return render_error(exc)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return render_error(
            NotFoundError("no such route; see GET /v1/models and the README for the API")
        )
    if exc.status_code == 405:
        response = render_error(MethodNotAllowedError(f"method not allowed: {exc.detail}"))
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
    return render_error(
        InvalidRequestError(f"invalid request: {first.get('msg', 'validation error')}", param=param)
    )


def install_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProxyError, _proxy_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
