"""DirectRoutes: the forwarded POST routes, reached without Starlette's router and FastAPI's
endpoint machinery.

A request to `/v1/chat/completions` (and the other forwarded paths) needs nothing of what sits
between the middlewares and the endpoint: route matching over every route, dependency solving,
the exception middleware's wrapper around every `send` of every stream chunk. py-spy put that
at about an eighth of the proxy's CPU per request (docs/benchmarks.md). This pure ASGI
middleware sits innermost, after the header limit, the key check and CORS, so every rule those
apply still applies; it hands the forwarded paths to the same functions the FastAPI routes call
(those routes stay for `/openapi.json`, and for anything this lets through). A `ProxyError`
raised before the response starts is answered as the exception middleware would.

Stateless: the path table is fixed when the app is built.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.errors import ProxyError
from proxy.http.rendering import render_error

Handler = Callable[[Request, str], Awaitable[Response]]


class DirectRoutes:
    def __init__(self, app: ASGIApp, routes: Mapping[str, Handler]) -> None:
        self._app = app
        self._routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            handler = self._routes.get(path)
            if handler is not None:
                try:
                    response = await handler(Request(scope, receive), path)
                except ProxyError as exc:
                    response = render_error(exc)
                await response(scope, receive, send)
                return
        await self._app(scope, receive, send)
