"""What the inbound edge (proxy/http/edge/protocol.py) answers when it refuses a connection or a request
itself: the errors, their bytes encoded once per server, and the settings they depend on;
each refusal is counted and logged at most once per interval.

State: one `Edge` per server, built by its `EdgeConfig` before the server starts, read by every
connection's protocol; only its rate-limited log changes afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from proxy.config import LimitsConfig
from proxy.errors import HeadersTooLargeError, InvalidRequestError, ProxyError
from proxy.http.edge.fdlimit import RateLimitedLog, connection_cap

logger = logging.getLogger("vllm_switch.edge")

HEAD_SLACK_BYTES = 4 * 1024  # raw head bytes (request line, CRLFs) beyond what the limit counts
# the server's refusals, as reasons of vllm_switch_rejected_total (docs/observability.md)
REASONS = {
    "over_cap": "too_many_connections",
    "too_large": "too_large",
    "invalid": "bad_input",
    "upgrade_body": "bad_input",
    "head_timeout": "request_timeout",
    "body_timeout": "request_timeout",
}


class RequestTimeoutError(ProxyError):
    status_code = 408
    error_type = "invalid_request_error"
    code = "request_timeout"


class TooManyConnectionsError(ProxyError):
    status_code = 503
    error_type = "server_error"
    code = "too_many_connections"


def encode(exc: ProxyError) -> bytes:
    """Everything of the answer to `exc` after the status line and uvicorn's default headers:
    the proxy's headers, content type and length, and body (serialized once), plus
    `Connection: close`."""
    body = exc.encoded_body()
    fields = {**exc.headers(), "content-length": str(len(body)), "content-type": "application/json"}
    head = "".join(f"{name.lower()}: {value}\r\n" for name, value in fields.items()).encode()
    return head + b"connection: close\r\n\r\n" + body


@dataclass
class Edge:
    """One server's edge settings, its encoded answers and its rate-limited log."""

    head_timeout_s: float
    body_timeout_s: float
    max_head_bytes: int
    max_connections: int
    answers: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    log: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(logger))
    count: Callable[[str], None] = lambda _reason: None  # the proxy's rejected counter

    def refuse(self, kind: str, message: str, *args: object) -> None:
        """A refusal of the server's own: logged at most once per interval, always counted
        (as `vllm_switch_rejected_total{reason=REASONS[kind]}`)."""
        self.log.warning(kind, message, *args)
        self.count(REASONS[kind])

    @classmethod
    def from_limits(cls, limits: LimitsConfig) -> Edge:
        cap = connection_cap(limits.max_connections)
        edge = cls(
            head_timeout_s=limits.head_timeout_s,
            body_timeout_s=limits.body_timeout_s,
            max_head_bytes=limits.max_header_bytes + HEAD_SLACK_BYTES,
            max_connections=cap,
        )
        limit = limits.max_header_bytes
        for key, exc in {
            "head_timeout": RequestTimeoutError(
                f"no complete request head within {limits.head_timeout_s:g} s"
            ),
            "body_timeout": RequestTimeoutError(
                f"the request body stalled: no byte for {limits.body_timeout_s:g} s"
            ),
            "too_large": HeadersTooLargeError(
                f"request line and headers are over {edge.max_head_bytes} bytes; "
                f"the limit is {limit}"
            ),
            "over_cap": TooManyConnectionsError(
                f"the proxy holds its maximum of {cap} connections; retry later",
                retry_after_s=limits.retry_after_s,
            ),
            "upgrade_body": InvalidRequestError(
                "a request with a body cannot ask for a protocol upgrade (none is supported)"
            ),
        }.items():
            edge.answers[key] = (exc.status_code, encode(exc))
        if cap < limits.max_connections:
            logger.warning(
                "connection cap lowered to %d (limits.max_connections %d) by the open-file limit",
                cap,
                limits.max_connections,
            )
        return edge


def response_bytes(answer: tuple[int, bytes], default_headers: list[tuple[bytes, bytes]]) -> bytes:
    status, rest = answer
    head = b"".join(b"%s: %s\r\n" % pair for pair in default_headers)  # date, server
    return STATUS_LINE[status] + head + rest
