"""HeaderLimitMiddleware: refuse oversized request heads with an OpenAI-style 431.

Stateless. It counts exactly, once the head is complete; the HTTP server's protocol
(proxy/http/edge/protocol.py) bounds an unfinished head at this limit plus a few KiB of raw bytes and answers
the same JSON 431 there, so a huge head is never buffered.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.errors import HeadersTooLargeError
from proxy.http.rendering import render_error


class HeaderLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, on_reject: Callable[[], None]) -> None:
        self._app = app
        self._max = max_bytes
        self._on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            size += sum(len(k) + len(v) + 4 for k, v in scope["headers"])  # ": " and CRLF
            if size > self._max:
                self._on_reject()
                too_large = f"request line and headers are {size} bytes; the limit is {self._max}"
                await render_error(HeadersTooLargeError(too_large))(scope, receive, send)
                return
        await self._app(scope, receive, send)
