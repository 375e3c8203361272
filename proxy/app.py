"""create_app: the proxy's FastAPI application (no I/O until its lifespan runs).

Every answer the application itself gives is an OpenAI error body, the early ones included:
no trailing-slash redirect (Starlette builds its `Location` from the client's `Host`: an open
redirect), an unhandled exception is a JSON 500 (still logged with its traceback by the
server), a refused CORS preflight a JSON 400. Stateless beyond the app it builds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from starlette.datastructures import Headers
from starlette.responses import Response

from proxy.config import ProxyConfig
from proxy.errors import InvalidRequestError, ProxyError
from proxy.http.auth import AuthMiddleware, guarding_keys
from proxy.http.limits import HeaderLimitMiddleware
from proxy.http.rendering import install_exception_handlers, render_error
from proxy.http.routes import admin as admin_routes, openai as openai_routes, schemas, ui
from proxy.http.routes.direct import DirectRoutes
from proxy.observability.metrics import UNKNOWN_MODEL
from proxy.services import Services


def create_app(
    config: ProxyConfig, *, upstream_transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    services = Services.build(config, transport=upstream_transport)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with services.running():
            yield

    app = FastAPI(
        title="vllm-switch",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,  # `/v1/models/` is a JSON 404, never a redirect
    )
    app.state.services = services
    app.include_router(openai_routes.router)
    app.include_router(admin_routes.router)
    app.include_router(ui.router)  # the operator page, /ui (not in /openapi.json)
    install_exception_handlers(app)
    app.add_exception_handler(Exception, _internal_error)  # runs in Starlette's outermost layer
    names = [n for m in config.models for n in (m.name, *m.aliases)]

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = FastAPI.openapi(app)
            admin = config.auth.admin_keys or config.auth.api_keys
            keyed = [
                p
                for p in spec["paths"]
                if guarding_keys(p, config.auth.api_keys, admin, config.auth.metrics_public)
            ]
            app.openapi_schema = schemas.document(spec, names, keyed)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    # added first, so it runs innermost (after the header limit, keys and CORS): the hot path
    app.add_middleware(DirectRoutes, routes=openai_routes.FORWARDED)
    auth = config.auth
    if auth.cors_origins:  # none unless configured: browsers may not call the API from other sites
        app.add_middleware(
            _JsonCorsMiddleware,
            allow_origins=list(auth.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    if auth.api_keys or auth.admin_keys or not auth.metrics_public:
        reject = services.metrics.rejected.labels(UNKNOWN_MODEL, "auth").inc
        app.add_middleware(AuthMiddleware, auth=auth, on_reject=lambda _path: reject())
    too_large = services.metrics.rejected.labels(UNKNOWN_MODEL, "too_large").inc
    # added last, so it runs first: an oversized head is refused before anything reads it
    app.add_middleware(
        HeaderLimitMiddleware, max_bytes=config.limits.max_header_bytes, on_reject=too_large
    )
    return app


async def _internal_error(_: Request, exc: Exception) -> Response:
    """A bug's answer: OpenAI JSON, never the exception's text (the server logs the traceback)."""
    return render_error(
        ProxyError(f"internal error in the proxy ({type(exc).__name__}); it is logged")
    )


class _JsonCorsMiddleware(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered in OpenAI JSON, not plain text."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        refused = render_error(InvalidRequestError(bytes(response.body).decode()))
        for name, value in response.headers.items():
            if name.startswith(("access-control-", "vary")):
                refused.headers[name] = value
        return refused
