"""API keys: who may call what. A pure ASGI middleware (streams pass through untouched).

    /v1/* and every forwarded route client keys (`auth.api_keys`); open when none are set
    (routes/table.py: /tokenize, /rerank, /score, /pooling, /classify, /v2/..., ...)
    /admin/*                        admin keys (`auth.admin_keys`, or the client keys if unset)
    /metrics                        open, or admin keys with `auth.metrics_public: false`
    /health, /ready                 always open (probes)

Keys are compared in constant time against every configured key, and never logged: the proxy
drops the client's Authorization header before forwarding (backends get their own `api_key`). State: the
middleware's key lists, fixed when the app is built.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from typing import TypeVar

from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.config import AuthConfig
from proxy.errors import UnauthorizedError
from proxy.http.rendering import render_error
from proxy.http.routes.table import CLIENT_PATHS

CLIENT_PREFIXES = CLIENT_PATHS  # compared as prefixes: "/score" guards "/score/x" too
K = TypeVar("K")


def guarding_keys(
    path: str, client: Sequence[K], admin: Sequence[K], metrics_public: bool
) -> Sequence[K]:
    """The keys that guard `path` (empty: open). The one place the table above is decided:
    the middleware passes encoded keys, the OpenAPI document the configured ones."""
    if path.startswith(CLIENT_PREFIXES):
        return client
    if path.startswith("/admin"):
        return admin
    if path == "/metrics" and not metrics_public:
        return admin
    return ()


def _matches(given: bytes, keys: Sequence[bytes]) -> bool:
    ok = False
    for key in keys:  # no early exit: time does not depend on which key matched
        ok |= hmac.compare_digest(given, key)
    return ok


class AuthMiddleware:
    def __init__(self, app: ASGIApp, auth: AuthConfig, on_reject: Callable[[str], None]) -> None:
        self._app = app
        self._client = tuple(f"Bearer {k}".encode() for k in auth.api_keys)
        self._admin = tuple(f"Bearer {k}".encode() for k in (auth.admin_keys or auth.api_keys))
        self._metrics_public = auth.metrics_public
        self._on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self._app(scope, receive, send)
            return
        keys = guarding_keys(scope["path"], self._client, self._admin, self._metrics_public)
        if keys:
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not _matches(given, keys):
                self._on_reject(scope["path"])
                why = "missing api key" if not given else "invalid api key"
                response = render_error(
                    UnauthorizedError(f"{why}: send 'Authorization: Bearer <key>'")
                )
                response.headers["www-authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self._app(scope, receive, send)
