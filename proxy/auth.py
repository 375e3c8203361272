"""API keys: who may call what. A pure ASGI middleware (streams pass through untouched).

    /v1/*, /tokenize, /detokenize   client keys (`auth.api_keys`); open when none are set
    /admin/*                        admin keys (`auth.admin_keys`, or the client keys if unset)
    /metrics                        open, or admin keys with `auth.metrics_public: false`
    /health, /ready                 always open (probes)

Keys are compared in constant time against every configured key, and never logged: the proxy
drops the client's Authorization header before forwarding (backends get their own `api_key`).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.config import AuthConfig
from proxy.errors import UnauthorizedError, send_error

CLIENT_PREFIXES = ("/v1/", "/tokenize", "/detokenize")


def _matches(given: bytes, keys: tuple[bytes, ...]) -> bool:
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

    @staticmethod
    def keys_needed(auth: AuthConfig, path: str) -> bool:
        """Whether `path` needs a key under `auth` (for the OpenAPI document)."""
        return bool(AuthMiddleware(_no_app, auth, lambda _: None)._required(path))

    def _required(self, path: str) -> tuple[bytes, ...]:
        if path.startswith(CLIENT_PREFIXES):
            return self._client
        if path.startswith("/admin"):
            return self._admin
        if path == "/metrics" and not self._metrics_public:
            return self._admin
        return ()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self._app(scope, receive, send)
            return
        keys = self._required(scope["path"])
        if keys:
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not _matches(given, keys):
                self._on_reject(scope["path"])
                why = "missing api key" if not given else "invalid api key"
                await send_error(
                    send,
                    UnauthorizedError(f"{why}: send 'Authorization: Bearer <key>'"),
                    ((b"www-authenticate", b"Bearer"),),
                )
                return
        await self._app(scope, receive, send)


async def _no_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise NotImplementedError
