"""Errors the proxy decides on, as OpenAI error bodies: the domain's words, no web framework.

Switching and backends raise these; the HTTP layer renders them (proxy/http/rendering.py), and
the edge encodes them once as raw bytes (proxy/http/edge/refusals.py). Backend responses with
4xx/5xx are not ProxyErrors: they pass through untouched. Every error that *this proxy*
produces carries the header `X-VLLM-Switch-Error: <code>` so operators can tell them apart from
the backend's own. Stateless.
"""

from __future__ import annotations

import json
from typing import ClassVar

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

    def headers(self) -> dict[str, str]:
        """The proxy's own headers on this answer (its error code, and Retry-After if any)."""
        headers = {ERROR_HEADER: self.code}
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, round(self.retry_after_s)))
        return headers

    def encoded_body(self) -> bytes:
        """ASCII JSON: a client's string echoed in a message (a model name) can hold anything."""
        return json.dumps(self.body()).encode()


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


class ConflictError(ProxyError):
    """An operator's action that the model's state does not allow (sleep a failed model)."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"


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


class ClientGoneError(Exception):
    """The client disconnected before its request was answered (nothing is sent back)."""


def sse_error(exc: ProxyError) -> bytes:
    """The event that ends a stream whose headers are already sent (vLLM frames it the same)."""
    return f"data: {json.dumps(exc.body())}\n\ndata: [DONE]\n\n".encode()
