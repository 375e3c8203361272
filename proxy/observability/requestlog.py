"""RequestRecord: what one request cost, recorded once as metrics and one log line.

Owned by the route handling the request; `UpstreamResponse` reports the first body byte and
the end of the response to it. `finish()` is idempotent, so every path - forwarded, refused by
the proxy, client gone - records exactly once.
"""

from __future__ import annotations

import logging
import secrets
import time

from proxy.backends.backend import NO_SWITCH, WakeTimings
from proxy.errors import ProxyError
from proxy.observability.metrics import UNKNOWN_MODEL, Metrics

log = logging.getLogger("vllm_switch.requests")

REJECT_REASONS = {
    "queue_full": "queue_full",
    "payload_too_large": "too_large",
    "model_not_found": "not_found",
    "invalid_request": "bad_input",
}


def reject_reason(exc: ProxyError) -> str:
    if exc.code == "backend_unavailable":
        return "timeout" if "not ready within" in exc.message else "unavailable"
    return REJECT_REASONS.get(exc.code, exc.code)


def _clean_id(value: str | None) -> str | None:
    """A client's X-Request-Id, if it is a sane one (printable, at most 128 characters)."""
    if value and len(value) <= 128 and value.isprintable():
        return value
    return None


class RequestRecord:
    def __init__(
        self, metrics: Metrics, endpoint: str, request_id: str | None, *, stream: bool = False
    ) -> None:
        self.metrics = metrics
        self.endpoint = endpoint
        self.request_id = _clean_id(request_id) or secrets.token_hex(8)
        self.model = UNKNOWN_MODEL
        self.stream = stream
        self.arrived = time.monotonic()
        self.queue_s: float | None = None
        self.timings = NO_SWITCH
        self._first_byte: float | None = None
        self._done = False

    def leased(self, model: str, timings: WakeTimings) -> None:
        self.model = model
        self.timings = timings
        self.queue_s = time.monotonic() - self.arrived
        self.metrics.queue_wait_seconds.labels(model).observe(self.queue_s)

    def first_byte(self) -> None:
        if self._first_byte is None:
            self._first_byte = time.monotonic()
            if self.stream:
                self.metrics.ttft_seconds.labels(self.model).observe(
                    self._first_byte - self.arrived
                )

    def rejected(self, exc: ProxyError) -> None:
        """A ProxyError answered this request; refusals (not backend failures) are counted."""
        if exc.code not in ("upstream_unreachable", "upstream_timeout"):
            self.metrics.rejected.labels(self.model, reject_reason(exc)).inc()
        else:  # the backend's fault: say exactly what it did (a malformed response, a timeout)
            log.warning("request %s: %s", self.request_id, exc.message)
        self.finish(exc.status_code, error=exc.code)

    def finish(self, status: int, *, error: str | None = None) -> None:
        if self._done:
            return
        self._done = True
        duration = time.monotonic() - self.arrived
        self.metrics.requests.labels(self.model, self.endpoint, str(status)).inc()
        self.metrics.request_seconds.labels(self.model, self.endpoint).observe(duration)
        t = self.timings
        log.info(
            "%s %s -> %d in %.0f ms",
            self.endpoint,
            self.model,
            status,
            duration * 1000,
            extra={
                "event": "request",
                "request_id": self.request_id,
                "model": self.model,
                "endpoint": self.endpoint,
                "status": status,
                "error": error,
                "duration_ms": round(duration * 1000, 1),
                "queue_ms": None if self.queue_s is None else round(self.queue_s * 1000, 1),
                "sleep_ms": t.sleep_ms,
                "wake_ms": t.wake_ms,
                "warmup_ms": t.warmup_ms,
            },
        )
